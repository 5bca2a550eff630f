//! Indexes that travel with their image: `clip index --push` puts the index in the image's own
//! repository as an OCI artifact; any machine finds it (`clip pull`, `clip inspect IMAGE`,
//! `clip mount IMAGE`) through the referrers tag of CNCF Distribution 2.8, which has no
//! referrers API (that path is tested against a recording server in `clip-registry`). Every
//! refusal is checked: an artifact whose blob lies, an index of another image, no index with
//! `--no-index`.

mod support;

use clip_testkit::{Image, Layer, ManifestFlavor, Registry};
use serde_json::Value;
use support::*;

fn image(registry: &Registry, tag: &str, marker: &str) -> clip_testkit::PushedImage {
    let base = Layer::from_fixture(&format!(
        "/etc dir 0755 0 0\n/etc/marker file 0644 0 0 content=\"{marker}\\n\"\n/data dir 0755 0 0\n/data/big file 0644 0 0 size=3000000 seed=3 text"
    ));
    let top =
        Layer::from_fixture("/app dir 0755 0 0\n/app/run file 0755 0 0 content=\"#!/bin/sh\\n\"");
    Image::new()
        .layer(base)
        .layer(top)
        .push(registry, tag, ManifestFlavor::Oci)
}

fn referrers_tag_entries(registry: &Registry, repo: &str, subject: &str) -> Vec<Value> {
    let (_, body) = registry
        .client()
        .get_manifest(
            repo,
            &subject.replacen(':', "-", 1),
            "application/vnd.oci.image.index.v1+json",
        )
        .expect("the referrers tag");
    let index: Value = serde_json::from_slice(&body).expect("index JSON");
    index["manifests"].as_array().expect("manifests").clone()
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry (scripts/test.sh runs it)"]
fn an_index_pushed_once_serves_a_second_node() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let pushed = image(&registry, "app:1", "second node");
    let image_ref = image_ref(&registry, "app:1");
    let first = scratch.path("first-node-cache");
    let second = scratch.path("second-node-cache");

    let out = json_of(clip(&[
        "index",
        "--push",
        "--quiet",
        "--json",
        "--cache-dir",
        first.to_str().unwrap(),
        &image_ref,
    ]));
    assert_eq!(out["pushed"]["via"], "referrers-tag", "{out}");
    let artifact = out["pushed"]["artifact"].as_str().unwrap().to_string();
    let entries = referrers_tag_entries(&registry, "app", &pushed.manifest_digest);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["digest"], artifact.as_str());
    assert_eq!(entries[0]["artifactType"], "application/vnd.clip.index.v1");

    // The second node: an empty cache. It downloads the artifact once, of its index blob
    // only the metadata (one range read; the seek windows stay in the registry), and no
    // layer blob.
    let mark = registry.log_mark();
    let pulled = pull_json(&second, &image_ref);
    assert_eq!(pulled["source"], "registry", "{pulled}");
    assert_eq!(pulled["artifact"], artifact.as_str());
    assert_eq!(pulled["via"], "referrers-tag");
    let requests = registry.requests_since(mark);
    let gets = |what: &str| {
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.uri.contains(what))
            .count()
    };
    assert_eq!(gets(&format!("/manifests/{artifact}")), 1, "{requests:#?}");
    let manifest = registry
        .client()
        .get_manifest(
            "app",
            &artifact,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .map(|(_, body)| serde_json::from_slice::<Value>(&body).unwrap())
        .unwrap();
    let layer = |n: usize| {
        manifest["layers"][n]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (index_blob, compressed) = (layer(0), layer(1));
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.clip.index.v1.metadata+zstd"
    );
    // The metadata comes compressed: the index blob itself is not read.
    assert_eq!(gets(&format!("/blobs/{compressed}")), 1, "{requests:#?}");
    assert_eq!(gets(&format!("/blobs/{index_blob}")), 0, "{requests:#?}");
    assert!(
        (std::fs::metadata(registry.blob_path(&compressed))
            .unwrap()
            .len() as usize)
            < std::fs::read(registry.blob_path(&index_blob)).unwrap()[40..48]
                .try_into()
                .map(u64::from_le_bytes)
                .unwrap() as usize,
        "smaller than the metadata"
    );
    let blob_bytes = std::fs::read(registry.blob_path(&index_blob)).unwrap();
    let metadata_len = u64::from_le_bytes(blob_bytes[40..48].try_into().unwrap()) as usize;
    assert!(
        metadata_len < blob_bytes.len(),
        "the 3 MB layer has checkpoints with windows"
    );
    let kept = std::fs::read(pulled["path"].as_str().unwrap()).unwrap();
    assert_eq!(
        kept,
        blob_bytes[..metadata_len],
        "the store keeps the metadata"
    );
    for layer in &pushed.layers {
        assert_eq!(
            gets(&format!("/blobs/{}", layer.digest)),
            0,
            "no layer is pulled"
        );
    }

    // Again: from the local store, without asking for the artifact.
    let mark = registry.log_mark();
    let again = pull_json(&second, &image_ref);
    assert_eq!(again["source"], "store", "{again}");
    let requests = registry.requests_since(mark);
    assert!(
        requests.iter().all(|r| !r.uri.contains(&artifact)
            && !r.uri.contains(&index_blob)
            && pushed.layers.iter().all(|l| !r.uri.contains(&l.digest))),
        "{requests:#?}"
    );
    let shown = clip(&[
        "inspect",
        "--cache-dir",
        second.to_str().unwrap(),
        &image_ref,
    ])
    .success()
    .stdout();
    assert!(shown.contains("downloaded from the registry"), "{shown}");

    // Mounted by its reference: only Range requests reach the layer blobs.
    let mark = registry.log_mark();
    let mount = Mount::start(
        std::path::Path::new(&image_ref),
        &scratch.path("mnt"),
        &second,
        &[],
    );
    assert_eq!(
        std::fs::read(mount.dir.join("etc/marker")).unwrap(),
        b"second node\n"
    );
    let big = std::fs::read(mount.dir.join("data/big")).unwrap();
    assert_eq!(big.len(), 3_000_000);
    let stats = mount.stats_when_idle();
    mount.unmount();
    let requests = registry.requests_since(mark);
    let layer_reads: Vec<_> = requests
        .iter()
        .filter(|r| pushed.layers.iter().any(|l| r.uri.contains(&l.digest)))
        .collect();
    assert!(!layer_reads.is_empty());
    assert!(
        layer_reads.iter().all(|r| r.is_partial()),
        "a whole layer was pulled: {layer_reads:#?}"
    );
    // The windows of the spans read came from the index blob, by range.
    let window_reads: Vec<_> = requests
        .iter()
        .filter(|r| r.uri.contains(&index_blob))
        .collect();
    assert!(!window_reads.is_empty(), "{requests:#?}");
    assert!(window_reads.iter().all(|r| r.is_partial()));
    assert!(
        stats["window_bytes_fetched"].as_u64().unwrap() > 0,
        "{stats}"
    );

    // `clip pull IMAGE OUT` writes the complete index, windows and all.
    let complete = scratch.path("complete.clip");
    clip(&[
        "pull",
        "--cache-dir",
        second.to_str().unwrap(),
        &image_ref,
        complete.to_str().unwrap(),
    ])
    .success();
    assert_eq!(std::fs::read(&complete).unwrap(), blob_bytes);

    // A registry that serves a damaged window: the span is refused (EIO), never served.
    let mut bad = blob_bytes.clone();
    for b in &mut bad[metadata_len..] {
        *b ^= 1;
    }
    std::fs::write(registry.blob_path(&index_blob), &bad).unwrap();
    let lied_to = scratch.path("lied-to-cache");
    let mount = Mount::start(
        std::path::Path::new(&image_ref),
        &scratch.path("lied-to-mnt"),
        &lied_to,
        &["--read-timeout", "2"],
    );
    // A read from the middle of the file (one from its start would inflate from the layer's
    // first checkpoint, which needs no window).
    let mut buf = vec![0; 4096];
    let read = std::fs::File::open(mount.dir.join("data/big"))
        .and_then(|f| std::os::unix::fs::FileExt::read_at(&f, &mut buf, 2_000_000));
    let stats = mount.stats_when_idle();
    let log = mount.unmount();
    std::fs::write(registry.blob_path(&index_blob), &blob_bytes).unwrap();
    assert_eq!(
        read.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "{log}"
    );
    assert!(stats["verify_failures"].as_u64().unwrap() >= 1, "{stats}");
    assert!(log.contains("seek window digest mismatch"), "{log}");

    // The same in the background: the daemon mounts the index located by its parent, as the
    // image the user named.
    let dir = scratch.path("daemon-mnt");
    let dir_s = dir.to_str().unwrap();
    clip(&[
        "mount",
        "--daemon",
        "--cache-dir",
        second.to_str().unwrap(),
        &image_ref,
        dir_s,
    ])
    .success();
    let marker = std::fs::read(dir.join("etc/marker"));
    clip(&["umount", dir_s]).success();
    assert_eq!(marker.unwrap(), b"second node\n");
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn the_referrers_tag_keeps_what_other_tools_put_there() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let pushed = image(&registry, "app:1", "shared tag");
    let client = registry.client();
    // A signature, the way cosign-like tools attach one: an artifact referring to the image,
    // listed in the referrers tag.
    let empty = client.push_blob("app", b"{}").unwrap();
    let sig_blob = client.push_blob("app", b"a signature").unwrap();
    let sig = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sig_blob, "size": 11}],
        "subject": {"mediaType": pushed.manifest_media_type, "digest": pushed.manifest_digest, "size": pushed.manifest_size},
    });
    let sig_body = serde_json::to_vec(&sig).unwrap();
    let sig_digest = clip_testkit::sha256_digest(&sig_body);
    client
        .push_manifest(
            "app",
            &sig_digest,
            "application/vnd.oci.image.manifest.v1+json",
            &sig_body,
        )
        .unwrap();
    let tag = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sig_digest, "size": sig_body.len(),
            "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        }],
    });
    client
        .push_manifest(
            "app",
            &pushed.manifest_digest.replacen(':', "-", 1),
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&tag).unwrap(),
        )
        .unwrap();

    let cache = scratch.path("cache");
    let image_ref = image_ref(&registry, "app:1");
    for _ in 0..2 {
        clip(&[
            "index",
            "--push",
            "--quiet",
            "--cache-dir",
            cache.to_str().unwrap(),
            &image_ref,
        ])
        .success();
        let entries = referrers_tag_entries(&registry, "app", &pushed.manifest_digest);
        let types: Vec<&str> = entries
            .iter()
            .map(|e| e["artifactType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "application/vnd.dev.cosign.artifact.sig.v1+json",
                "application/vnd.clip.index.v1"
            ],
            "pushing (again) keeps the signature and lists one clip index"
        );
        assert_eq!(entries[0]["digest"], sig_digest.as_str());
    }
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn lying_or_missing_indexes_are_refused() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let a = image(&registry, "app:a", "image a");
    let b = image(&registry, "app:b", "image b");
    let a_ref = image_ref(&registry, "app:a");
    let b_ref = image_ref(&registry, "app:b");
    let fresh = |name: &str| scratch.path(name).to_str().unwrap().to_string();

    // An index whose blob no longer matches its digest.
    let out = json_of(clip(&[
        "index",
        "--push",
        "--quiet",
        "--json",
        "--cache-dir",
        &fresh("indexer"),
        &a_ref,
    ]));
    let artifact = out["pushed"]["artifact"].as_str().unwrap().to_string();
    let (_, manifest) = registry
        .client()
        .get_manifest(
            "app",
            &artifact,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    let blob = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = registry.blob_path(&blob);
    let good = std::fs::read(&stored).unwrap();
    let metadata_len = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
    let client = registry.client();
    // Serves `artifact` (a manifest) as the only referrer of the image manifest `subject`.
    let only_referrer = |subject: &str, artifact: &Value| {
        let body = serde_json::to_vec(artifact).unwrap();
        let digest = clip_testkit::sha256_digest(&body);
        let media_type = "application/vnd.oci.image.manifest.v1+json";
        client
            .push_manifest("app", &digest, media_type, &body)
            .unwrap();
        let tag = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": media_type, "digest": digest, "size": body.len(),
                "artifactType": "application/vnd.clip.index.v1",
                "annotations": {"dev.clip.index.format": clip_archive::FORMAT_VERSION.to_string()},
            }],
        });
        client
            .push_manifest(
                "app",
                &subject.replacen(':', "-", 1),
                "application/vnd.oci.image.index.v1+json",
                &serde_json::to_vec(&tag).unwrap(),
            )
            .unwrap();
    };
    // Compressed metadata that are not the metadata the manifest names (its blob is what its
    // digest says: the registry does not lie, the artifact does).
    let mut wrong = good[..metadata_len].to_vec();
    wrong[metadata_len / 2] ^= 1;
    let wrong = zstd::bulk::compress(&wrong, 3).unwrap();
    let wrong_digest = client.push_blob("app", &wrong).unwrap();
    let mut lying = manifest.clone();
    lying["layers"][1]["digest"] = wrong_digest.into();
    lying["layers"][1]["size"] = wrong.len().into();
    only_referrer(&a.manifest_digest, &lying);
    let err = clip(&["pull", "--cache-dir", &fresh("lied-to"), &a_ref]).failure();
    assert!(
        err.contains("its compressed metadata")
            && err.contains("are not the metadata its manifest names"),
        "{err}"
    );
    // An artifact without compressed metadata (an older clip's): the metadata is read from
    // the index blob by range, and checked just the same.
    let mut older = manifest.clone();
    older["layers"].as_array_mut().unwrap().truncate(1);
    only_referrer(&a.manifest_digest, &older);
    let mut bad = good.clone();
    bad[metadata_len / 2] ^= 1;
    std::fs::write(&stored, &bad).unwrap();
    let err = clip(&["pull", "--cache-dir", &fresh("lied-to-by-range"), &a_ref]).failure();
    assert!(
        err.contains(&format!("the first {metadata_len} bytes of its blob"))
            && err.contains("are not the metadata its manifest names"),
        "{err}"
    );
    std::fs::write(&stored, &good).unwrap();
    let pulled = pull_json(std::path::Path::new(&fresh("older")), &a_ref);
    assert_eq!(pulled["source"], "registry", "{pulled}");

    // The index of image a, presented as image b's.
    let b_subject = serde_json::json!({
        "mediaType": b.manifest_media_type, "digest": b.manifest_digest, "size": b.manifest_size,
    });
    let mut forged = manifest.clone();
    forged["subject"] = b_subject;
    only_referrer(&b.manifest_digest, &forged);
    let cache = fresh("forged");
    let err = clip(&["pull", "--cache-dir", &cache, &b_ref]).failure();
    assert!(err.contains("does not belong to"), "{err}");
    assert!(
        err.contains(&a.manifest_digest),
        "names the manifest it indexes: {err}"
    );
    assert!(
        std::fs::read_dir(std::path::Path::new(&cache).join("indexes/f2"))
            .map(|d| d
                .filter(|e| e
                    .as_ref()
                    .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with("ref-")))
                .count())
            .unwrap_or(0)
            == 0,
        "nothing refused is kept"
    );

    // No index at all.
    image(&registry, "other:1", "no index");
    let other = image_ref(&registry, "other:1");
    let err = clip(&[
        "pull",
        "--no-index",
        "--cache-dir",
        &fresh("strict"),
        &other,
    ])
    .failure();
    assert!(err.contains("has no clip index"), "{err}");
    assert!(err.contains("--push"), "says how to make one: {err}");
    // Without --no-index it is made here, and says so.
    let made = clip(&["pull", "--json", "--cache-dir", &fresh("lenient"), &other]).success();
    assert!(
        made.stderr().contains("indexing it here"),
        "{}",
        made.stderr()
    );
    let v: Value = serde_json::from_str(&made.stdout()).unwrap();
    assert_eq!(v["source"], "indexed-here");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry (scripts/test.sh runs it)"]
fn mirrors_serve_reads_and_the_registry_is_the_fallback() {
    let origin = Registry::start();
    let scratch = Scratch::new();
    let pushed = image(&origin, "app:1", "through a mirror");
    let image_ref = image_ref(&origin, "app:1");
    clip(&[
        "index",
        "--push",
        "--quiet",
        "--cache-dir",
        scratch.path("ci").to_str().unwrap(),
        &image_ref,
    ])
    .success();
    let mirror = Registry::start_mirror_of(&origin);
    let conf = scratch.path("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{o}\"\nlocation = \"{o}\"\n[[registry.mirror]]\nlocation = \"{m}\"\ninsecure = true\n",
            o = origin.addr(),
            m = mirror.addr()
        ),
    )
    .unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let from_clip = |r: &clip_testkit::AccessLogEntry| r.user_agent.starts_with("clip/");
    let cache = scratch.path("node");

    // The index is found and downloaded through the mirror: clip asks the registry nothing.
    let mark_origin = origin.log_mark();
    let pulled = clip_command()
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .args([
            "pull",
            "--json",
            "--cache-dir",
            cache.to_str().unwrap(),
            &image_ref,
        ])
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let v: Value = serde_json::from_slice(&pulled.stdout).unwrap();
    assert_eq!(v["source"], "registry", "{v}");
    let asked: Vec<_> = origin
        .requests_since(mark_origin)
        .into_iter()
        .filter(|r| from_clip(r))
        .collect();
    assert!(asked.is_empty(), "clip went to the registry: {asked:#?}");
    assert!(mirror
        .requests()
        .iter()
        .any(|r| from_clip(r) && r.uri.contains("/manifests/")));

    // Mounted by reference: the file's bytes come through the mirror.
    let before_mount = origin.log_mark();
    let mount = Mount::try_start_env(
        std::path::Path::new(&image_ref),
        &scratch.path("mnt"),
        &cache,
        &["--read-timeout", "60"],
        &[("CONTAINERS_REGISTRIES_CONF", conf.as_str())],
    )
    .unwrap();
    assert_eq!(
        std::fs::read(mount.dir.join("etc/marker")).unwrap(),
        b"through a mirror\n"
    );
    let layer_reads = |requests: Vec<clip_testkit::AccessLogEntry>| {
        requests
            .into_iter()
            .filter(|q| from_clip(q) && pushed.layers.iter().any(|l| q.uri.contains(&l.digest)))
            .count()
    };
    assert!(layer_reads(mirror.requests()) > 0);
    assert_eq!(
        layer_reads(origin.requests_since(before_mount)),
        0,
        "no layer read went to the registry: {}",
        mount.log()
    );

    // The mirror goes away: reads (of the other layer, not read yet) fall back to the
    // registry, and are still right.
    drop(mirror);
    assert_eq!(
        std::fs::read(mount.dir.join("app/run")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert!(
        layer_reads(origin.requests_since(before_mount)) > 0,
        "the registry served what the mirror could not"
    );
    mount.unmount();
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry (scripts/test.sh runs it)"]
fn a_mount_records_what_is_read() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    image(&registry, "rec:1", "recorded");
    let image_ref = image_ref(&registry, "rec:1");
    let cache = scratch.path("cache");
    let cache_s = cache.to_str().unwrap();
    clip(&["index", "--quiet", "--cache-dir", cache_s, &image_ref]).success();
    let none = clip(&["inspect", "--profile", "--cache-dir", cache_s, &image_ref]).failure();
    assert!(none.contains("no startup profile"), "{none}");

    let mount = Mount::start(
        std::path::Path::new(&image_ref),
        &scratch.path("mnt"),
        &cache,
        &["--record"],
    );
    assert_eq!(
        std::fs::read(mount.dir.join("etc/marker")).unwrap(),
        b"recorded\n"
    );
    std::fs::read(mount.dir.join("app/run")).unwrap();
    let log = mount.unmount();
    assert!(log.contains("recorded"), "{log}");
    let profile = json_of(clip(&[
        "inspect",
        "--profile",
        "--json",
        "--cache-dir",
        cache_s,
        &image_ref,
    ]));
    let files: Vec<&str> = profile["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["/etc/marker", "/app/run"], "{profile}");
    assert!(!profile["spans"].as_array().unwrap().is_empty());
    // Not read, not recorded.
    assert!(!files.contains(&"/data/big"));
    let text = clip(&["inspect", "--cache-dir", cache_s, &image_ref])
        .success()
        .stdout();
    assert!(
        text.contains("profile    ") && text.contains("2 files"),
        "{text}"
    );
}
