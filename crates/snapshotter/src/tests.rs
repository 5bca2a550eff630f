//! The snapshot operations without containerd, root or mounts: a temporary root directory
//! and a fake [`Images`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::remote::{
    chain_id, BoxError, Images, IndexedImage, LayerRequest, MountSource, LABEL_TARGET,
};
use crate::{Error, Kind, Snapshotter};

#[derive(Default)]
struct FakeImages {
    image: Option<IndexedImage>,
    finds: Mutex<u32>,
    mounts: Mutex<Vec<(String, String)>>,
}

impl Images for FakeImages {
    fn find(&self, _: &LayerRequest) -> Result<Option<IndexedImage>, BoxError> {
        *self.finds.lock().expect("lock") += 1;
        Ok(self.image.clone())
    }
    fn mount(&self, image: &MountSource<'_>, _: &Path, _: &Path) -> Result<u32, BoxError> {
        assert!(image.index.is_file(), "the index copy exists");
        assert_eq!(image.windows_blob, Some("sha256:w"));
        self.mounts.lock().expect("lock").push((
            image.reference.to_string(),
            image.index.display().to_string(),
        ));
        Ok(1)
    }
    fn unmount(&self, _: &Path) -> Result<(), BoxError> {
        Ok(())
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn code(e: Error) -> tonic::Code {
    e.code()
}

#[test]
fn the_normal_path_is_containerds_overlayfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let s = Snapshotter::open(&root, Arc::new(FakeImages::default())).expect("open");
    let root = s.root().to_path_buf();
    let fs_of = |id: u64| {
        root.join(format!("snapshots/{id}/fs"))
            .display()
            .to_string()
    };

    // A first layer: a bind mount of its own directory.
    let m = s
        .prepare(Kind::Active, "extract-1", "", BTreeMap::new())
        .expect("prepare");
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].kind.as_str(), m[0].source.clone()),
        ("bind", fs_of(1))
    );
    assert_eq!(m[0].options, ["rw", "rbind"]);
    std::fs::write(root.join("snapshots/1/fs/file"), b"12345").expect("write");
    assert_eq!(
        code(
            s.prepare(Kind::Active, "extract-1", "", BTreeMap::new())
                .unwrap_err()
        ),
        tonic::Code::AlreadyExists
    );
    assert_eq!(
        code(s.commit("layer-1", "missing", BTreeMap::new()).unwrap_err()),
        tonic::Code::NotFound
    );
    s.commit("layer-1", "extract-1", labels(&[("a", "1")]))
        .expect("commit");
    assert_eq!(s.usage("layer-1").expect("usage").inodes, 2);
    assert_eq!(
        code(s.mounts("layer-1").unwrap_err()),
        tonic::Code::FailedPrecondition
    );

    // Above it: an overlay; a view of one parent: a read-only bind of it.
    let m = s
        .prepare(Kind::Active, "container", "layer-1", BTreeMap::new())
        .expect("prepare");
    assert_eq!(m[0].kind, "overlay");
    assert_eq!(
        m[0].options,
        [
            format!("workdir={}", root.join("snapshots/2/work").display()),
            format!("upperdir={}", fs_of(2)),
            format!("lowerdir={}", fs_of(1)),
        ]
    );
    let m = s
        .prepare(Kind::View, "view", "layer-1", BTreeMap::new())
        .expect("view");
    assert_eq!(
        (m[0].kind.as_str(), m[0].source.clone()),
        ("bind", fs_of(1))
    );
    assert_eq!(m[0].options, ["ro", "rbind"]);
    assert_eq!(
        code(s.commit("x", "view", BTreeMap::new()).unwrap_err()),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(
            s.prepare(Kind::Active, "y", "container", BTreeMap::new())
                .unwrap_err()
        ),
        tonic::Code::InvalidArgument,
        "a parent must be committed"
    );
    assert_eq!(
        code(
            s.prepare(Kind::Active, "y", "nope", BTreeMap::new())
                .unwrap_err()
        ),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(s.remove("layer-1").unwrap_err()),
        tonic::Code::FailedPrecondition,
        "it has children"
    );

    // Update: all labels, or some by field path; other fields are refused.
    let info = s
        .update(
            "layer-1",
            labels(&[("b", "2"), ("c", "3")]),
            &["labels.b".into()],
        )
        .expect("update");
    assert_eq!(info.labels, labels(&[("a", "1"), ("b", "2")]));
    let info = s
        .update("layer-1", labels(&[]), &["labels.a".into()])
        .expect("update");
    assert_eq!(info.labels, labels(&[("b", "2")]));
    assert_eq!(
        code(
            s.update("layer-1", labels(&[]), &["parent".into()])
                .unwrap_err()
        ),
        tonic::Code::InvalidArgument
    );
    let info = s
        .update("layer-1", labels(&[("z", "9")]), &[])
        .expect("update");
    assert_eq!(info.labels, labels(&[("z", "9")]));

    // List with containerd's filters.
    let names = |f: &[&str]| -> Vec<String> {
        let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
        s.list(&f)
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect()
    };
    assert_eq!(names(&[]), ["container", "layer-1", "view"]);
    assert_eq!(names(&["kind==committed"]), ["layer-1"]);
    assert_eq!(names(&["parent==layer-1,kind==view"]), ["view"]);
    assert_eq!(names(&["labels.z==9", "name==view"]), ["layer-1", "view"]);
    assert_eq!(
        code(s.list(&["kind=".into()]).unwrap_err()),
        tonic::Code::InvalidArgument
    );

    // Persisted: a new process sees the same snapshots; directories nothing names go.
    std::fs::create_dir_all(root.join("snapshots/99/fs")).expect("mkdir");
    drop(s);
    let s = Snapshotter::open(&root, Arc::new(FakeImages::default())).expect("reopen");
    assert_eq!(s.stat("layer-1").expect("stat").kind, Kind::Committed);
    assert!(!root.join("snapshots/99").exists(), "cleaned up at start");
    s.remove("view").expect("remove");
    s.remove("container").expect("remove");
    s.remove("layer-1").expect("remove");
    assert!(!root.join("snapshots/1").exists());
    assert_eq!(code(s.stat("layer-1").unwrap_err()), tonic::Code::NotFound);
}

#[test]
fn an_indexed_image_is_served_by_its_top_layer() {
    let diff = ["sha256:d0", "sha256:d1"];
    let dir = tempfile::tempdir().expect("tempdir");
    let index = dir.path().join("image.clip");
    std::fs::write(&index, b"an index").expect("write");
    let images = Arc::new(FakeImages {
        image: Some(IndexedImage {
            reference: "r.example/app@sha256:m".into(),
            manifest_digest: "sha256:0123abcd".into(),
            index,
            windows_blob: Some("sha256:w".into()),
            layers: vec![
                ("sha256:b0".into(), diff[0].into()),
                ("sha256:b1".into(), diff[1].into()),
            ],
        }),
        ..FakeImages::default()
    });
    let s = Snapshotter::open(&dir.path().join("root"), images.clone()).expect("open");
    let chain0 = chain_id(&diff[..1]);
    let chain1 = chain_id(&diff);
    let layer = |blob: &str, target: &str| {
        labels(&[
            (LABEL_TARGET, target),
            (
                "containerd.io/snapshot/remote/stargz.reference",
                "r.example/app:1",
            ),
            ("containerd.io/snapshot/remote/stargz.digest", blob),
        ])
    };

    // Each layer: committed under its chain ID at once, "already exists".
    let e = s
        .prepare(
            Kind::Active,
            "ns/1/extract-a",
            "",
            layer("sha256:b0", &chain0),
        )
        .unwrap_err();
    assert_eq!(code(e), tonic::Code::AlreadyExists);
    let e = s
        .prepare(
            Kind::Active,
            "ns/2/extract-b",
            &chain0,
            layer("sha256:b1", &chain1),
        )
        .unwrap_err();
    assert_eq!(code(e), tonic::Code::AlreadyExists);
    assert_eq!(*images.finds.lock().expect("lock"), 1, "looked up once");
    // What containerd's metadata store then asks.
    let filter = format!("labels.\"containerd.io/snapshot.ref\"=={chain1},parent==\"{chain0}\"");
    let found = s.list(&[filter]).expect("list");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, Kind::Committed);
    assert_eq!(found[0].labels["containerd.io/snapshot/remote"], "clip");

    // A container: the clip mount is its only lower directory.
    let m = s
        .prepare(Kind::Active, "ns/3/container", &chain1, BTreeMap::new())
        .expect("prepare");
    let mnt = s.image_mountpoint("sha256:0123abcd").expect("mountpoint");
    assert_eq!(m[0].kind, "overlay");
    assert_eq!(
        m[0].options.last().map(String::as_str),
        Some(format!("lowerdir={}", mnt.display()).as_str())
    );
    let mounted = images.mounts.lock().expect("lock").clone();
    assert_eq!(mounted.len(), 1);
    assert_eq!(mounted[0].0, "r.example/app@sha256:m");
    assert!(
        mounted[0].1.ends_with("images/0123abcd/index.clip"),
        "{mounted:?}"
    );
    // Something stacked directly on a clip lower layer cannot be served (and is not kept).
    let e = s
        .prepare(Kind::Active, "ns/4/other", &chain0, BTreeMap::new())
        .unwrap_err();
    assert_eq!(code(e), tonic::Code::FailedPrecondition);
    assert_eq!(
        code(s.stat("ns/4/other").unwrap_err()),
        tonic::Code::NotFound
    );

    // A chain ID that does not match the index: the normal path.
    let m = s
        .prepare(
            Kind::Active,
            "ns/5/extract-c",
            "",
            layer("sha256:b0", "sha256:other"),
        )
        .expect("normal path");
    assert_eq!(m[0].kind, "bind");

    // Removal, children first; the image's directory goes with its last snapshot.
    for key in ["ns/5/extract-c", "ns/3/container", &chain1, &chain0] {
        s.remove(key).expect("remove");
    }
    assert!(!mnt.parent().expect("image dir").exists());
}
