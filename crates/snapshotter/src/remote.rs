//! The remote path: which layer of which image a `Prepare` is about, and the interface
//! through which the snapshotter reaches clip images.
//!
//! containerd unpacks an image layer by layer, bottom up. For each layer it calls
//! `Prepare(key, parent)` with the label `containerd.io/snapshot.ref` = the layer's chain ID,
//! plus the labels its pull handler put on the layer's descriptor. Two clients set labels that
//! name the image:
//!
//! | label | set by |
//! | --- | --- |
//! | `containerd.io/snapshot/cri.image-ref` | the CRI plugin, with `disable_snapshot_annotations = false` |
//! | `containerd.io/snapshot/cri.layer-digest` | idem |
//! | `containerd.io/snapshot/cri.manifest-digest` | idem |
//! | `containerd.io/snapshot/remote/stargz.reference` | `ctr-remote image rpull` (the reference typed) |
//! | `containerd.io/snapshot/remote/stargz.digest` | idem (the layer's digest) |
//!
//! (`…cri.image-layers` and `…stargz.layers` list the layers from this one up, cut to fit a
//! label's 4 KiB; the manifest is the better source and is used instead.)
//!
//! With these, the snapshotter asks the [`Images`] implementation for the image's clip index
//! (the CLI finds it in the local index store or through the registry's referrers), finds the
//! layer in the index's layer table and checks that the chain ID of the index's `diff_id`s up
//! to it equals `containerd.io/snapshot.ref`: only then is the layer taken as clip's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A boxed error from the [`Images`] implementation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// containerd's label: the chain ID of the snapshot a `Prepare` is meant to become.
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
/// Set on the snapshots clip serves (as stargz-snapshotter marks its own).
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";

const CRI_REF: &str = "containerd.io/snapshot/cri.image-ref";
const CRI_LAYER: &str = "containerd.io/snapshot/cri.layer-digest";
const CRI_MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const STARGZ_REF: &str = "containerd.io/snapshot/remote/stargz.reference";
const STARGZ_LAYER: &str = "containerd.io/snapshot/remote/stargz.digest";

/// The image and layer a `Prepare`'s labels name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerRequest {
    /// The image reference as the client gave it.
    pub reference: String,
    /// The manifest digest, when the client gave it (CRI does; `ctr-remote` does not).
    pub manifest_digest: Option<String>,
    /// The layer's blob digest.
    pub layer_digest: String,
}

impl LayerRequest {
    /// The request in `labels`, if they name an image and a layer.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<LayerRequest> {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        let (reference, layer_digest) = match (get(CRI_REF), get(CRI_LAYER)) {
            (Some(r), Some(l)) => (r, l),
            _ => (get(STARGZ_REF)?, get(STARGZ_LAYER)?),
        };
        Some(LayerRequest {
            reference,
            manifest_digest: get(CRI_MANIFEST),
            layer_digest,
        })
    }
}

/// An image whose registry holds a clip index for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedImage {
    /// The reference, pinned to the manifest digest (`registry/repo@sha256:…`).
    pub reference: String,
    /// The manifest digest.
    pub manifest_digest: String,
    /// The index file (in clip's local index store; the snapshotter keeps a copy).
    pub index: PathBuf,
    /// The complete index blob in the image's repository, when `index` may hold only its
    /// metadata: where the mount reads seek windows from.
    pub windows_blob: Option<String>,
    /// The layers bottom up: blob digest and `diff_id`.
    pub layers: Vec<(String, String)>,
}

impl IndexedImage {
    /// The position of layer `digest` and the chain ID of the layers up to it.
    pub fn layer(&self, digest: &str) -> Option<(usize, String)> {
        let i = self.layers.iter().position(|(d, _)| d == digest)?;
        let diff_ids: Vec<&str> = self.layers[..=i].iter().map(|(_, d)| d.as_str()).collect();
        Some((i, chain_id(&diff_ids)))
    }
}

/// The OCI chain ID of a stack of `diff_id`s: `ChainID(L0) = DiffID(L0)`, `ChainID(L0..Ln) =
/// sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`.
pub fn chain_id(diff_ids: &[&str]) -> String {
    let mut iter = diff_ids.iter();
    let Some(first) = iter.next() else {
        return String::new();
    };
    iter.fold(first.to_string(), |chain, diff| {
        let mut h = Sha256::new();
        h.update(chain.as_bytes());
        h.update(b" ");
        h.update(diff.as_bytes());
        format!("sha256:{}", hex::encode(h.finalize()))
    })
}

/// What a clip mount serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSource<'a> {
    /// The image reference, pinned to its manifest digest.
    pub reference: &'a str,
    /// The index file.
    pub index: &'a Path,
    /// Where the seek windows are, when the index file holds only the metadata.
    pub windows_blob: Option<&'a str>,
}

/// How the snapshotter reaches clip images; the CLI implements it (registry, index store,
/// mount daemons). The snapshotter never decodes an index nor fetches a byte itself.
///
/// Every method may block (network, process start); the snapshotter calls them off its async
/// threads and without holding its state lock.
pub trait Images: Send + Sync {
    /// The clip index of the image `request` names, from the local index store or the image's
    /// registry; `Ok(None)` when there is none (the layer then takes the normal path).
    fn find(&self, request: &LayerRequest) -> Result<Option<IndexedImage>, BoxError>;

    /// Mounts `image` read-only at `dir` (an existing empty directory), served by a process
    /// that outlives the snapshotter, logging to `log`; returns once the mount is ready, with
    /// the serving process's pid.
    fn mount(&self, image: &MountSource<'_>, dir: &Path, log: &Path) -> Result<u32, BoxError>;

    /// Unmounts `dir`, also when its process died; lazily when it is busy.
    fn unmount(&self, dir: &Path) -> Result<(), BoxError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        assert_eq!(chain_id(&[]), "");
        assert_eq!(chain_id(&["sha256:a"]), "sha256:a");
        let two = chain_id(&["sha256:a", "sha256:b"]);
        let expect = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"sha256:a sha256:b"))
        );
        assert_eq!(two, expect);
        let three = chain_id(&["sha256:a", "sha256:b", "sha256:c"]);
        let expect = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{two} sha256:c").as_bytes()))
        );
        assert_eq!(three, expect);
    }

    #[test]
    fn labels_of_cri_and_ctr_remote() {
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cri = l(&[
            (CRI_REF, "r/x:1"),
            (CRI_LAYER, "sha256:l"),
            (CRI_MANIFEST, "sha256:m"),
        ]);
        assert_eq!(
            LayerRequest::from_labels(&cri),
            Some(LayerRequest {
                reference: "r/x:1".into(),
                manifest_digest: Some("sha256:m".into()),
                layer_digest: "sha256:l".into()
            })
        );
        let stargz = l(&[(STARGZ_REF, "r/x:1"), (STARGZ_LAYER, "sha256:l")]);
        assert_eq!(
            LayerRequest::from_labels(&stargz).map(|r| r.manifest_digest),
            Some(None)
        );
        assert_eq!(LayerRequest::from_labels(&l(&[(LABEL_TARGET, "x")])), None);
    }
}
