//! The testkit against the real tools: images built here, pushed to a real registry, pulled
//! back through skopeo + umoci.

use std::collections::BTreeMap;

use clip_testkit::{
    assert_same_tree, oracle_unpack, oracle_unpack_dir, push_index, sha256_digest, Compression,
    EntrySnapshot, Image, Layer, LayerOptions, ManifestFlavor, Platform, Registry, TarFlavor,
    TreeSnapshot,
};

const BASE: &str = r#"
/etc                dir   0750 0 0       mtime=1600000000.25
/etc/hostname       file  0644 0 0       mtime=1700000000.123456789 content="clip\n"
/etc/motd           file  0600 12 34     mtime=1700000001 content="hello"
/usr                dir   0755 0 0
/usr/bin            dir   0755 0 0
/usr/bin/tool       file  4755 0 0       size=100000 seed=7
/usr/bin/hl         hardlink target=/usr/bin/tool
/usr/lib            dir   0755 0 0
/usr/lib/big.txt    file  0644 1000 1000 size=300000 seed=1 text
/bin                symlink 0777 0 0     target=usr/bin mtime=1500000000.5
/dev                dir   0755 0 0
/dev/null           char  0666 0 0 major=1 minor=3
/dev/sda            block 0660 0 6 major=8 minor=0
/run                dir   0755 0 0
/run/fifo           fifo  0644 0 0
/tmp                dir   1777 0 0
/opt                dir   0755 0 0
/opt/old            file  0644 0 0 content="old"
/data               dir   0755 0 0
/data/f             file  0644 0 0 content="x" xattr.user.k=v xattr.user.bin=0xdeadbeef
/ids                file  2755 4294967294 3000000 content="big ids"
"#;

const TOP: &str = r#"
/etc/.wh.hostname   whiteout
/opt/.wh..wh..opq   opaque
/opt/new            file 0640 0 0 content="new"
/etc/motd           file 0644 0 0 mtime=1700000002 content="replaced"
"#;

fn entry<'a>(tree: &'a TreeSnapshot, path: &str) -> &'a EntrySnapshot {
    tree.get(path)
        .unwrap_or_else(|| panic!("{path} missing from {:#?}", tree.keys()))
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn two_layer_image_unpacks_as_the_fixture_says() {
    let registry = Registry::start();
    let base = Layer::from_fixture(BASE);
    let top =
        Layer::from_fixture_with(TOP, &LayerOptions::default().compression(Compression::Zstd));
    let image = Image::new().layer(base.clone()).layer(top.clone());
    let pushed = image.push(&registry, "test/two:1", ManifestFlavor::Oci);
    assert_eq!(pushed.layers[0].digest, base.digest());
    assert_eq!(
        pushed.layers[1].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        pushed.manifest_digest,
        sha256_digest(pushed.manifest.as_bytes())
    );
    let config: serde_json::Value = serde_json::from_str(&pushed.config).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][1], top.diff_id());

    let mark = registry.log_mark();
    let tree = oracle_unpack(&registry, "test/two:1");

    // Whiteout and opaque marker applied, markers themselves gone.
    assert!(!tree.contains_key("/etc/hostname"));
    assert!(!tree.contains_key("/etc/.wh.hostname"));
    assert!(!tree.contains_key("/opt/old"));
    assert!(!tree.contains_key("/opt/.wh..wh..opq"));
    assert_eq!(entry(&tree, "/opt/new").mode, 0o640);
    let motd = entry(&tree, "/etc/motd");
    assert_eq!(
        (motd.uid, motd.gid, motd.size, motd.mtime_sec),
        (0, 0, 8, 1_700_000_002)
    );
    assert_eq!(
        motd.sha256.as_deref(),
        Some(&sha256_digest(b"replaced")[7..])
    );

    // Modes, owners, mtimes (nanoseconds, and directories restored after their children).
    let etc = entry(&tree, "/etc");
    assert_eq!(
        (etc.kind, etc.mode, etc.mtime_sec, etc.mtime_nsec),
        ("dir", 0o750, 1_600_000_000, 250_000_000)
    );
    assert_eq!(entry(&tree, "/tmp").mode, 0o1777);
    let tool = entry(&tree, "/usr/bin/tool");
    assert_eq!((tool.mode, tool.size, tool.nlink), (0o4755, 100_000, 2));
    let ids = entry(&tree, "/ids");
    assert_eq!(
        (ids.mode, ids.uid, ids.gid),
        (0o2755, 4_294_967_294, 3_000_000)
    );
    let big = entry(&tree, "/usr/lib/big.txt");
    assert_eq!((big.uid, big.gid, big.size), (1000, 1000, 300_000));
    let expected = clip_testkit::text::pseudo_text(300_000, 1);
    assert_eq!(big.sha256.as_deref(), Some(&sha256_digest(&expected)[7..]));

    // Hard link shares the inode; symlink target and mtime; devices; fifo; xattrs.
    let groups = tree.hardlink_groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        groups[0].iter().collect::<Vec<_>>(),
        ["/usr/bin/hl", "/usr/bin/tool"]
    );
    assert_eq!(entry(&tree, "/usr/bin/hl").ino, tool.ino);
    let bin = entry(&tree, "/bin");
    assert_eq!(
        (bin.kind, bin.link_target.as_deref()),
        ("symlink", Some("usr/bin"))
    );
    assert_eq!(
        (bin.mtime_sec, bin.mtime_nsec),
        (1_500_000_000, 500_000_000)
    );
    assert_eq!(entry(&tree, "/dev/null").rdev, Some((1, 3)));
    let sda = entry(&tree, "/dev/sda");
    assert_eq!(
        (sda.kind, sda.mode, sda.gid, sda.rdev),
        ("block", 0o660, 6, Some((8, 0)))
    );
    assert_eq!(entry(&tree, "/run/fifo").kind, "fifo");
    let xattrs: BTreeMap<String, Vec<u8>> = [
        ("user.bin".to_string(), vec![0xde, 0xad, 0xbe, 0xef]),
        ("user.k".to_string(), b"v".to_vec()),
    ]
    .into();
    assert_eq!(entry(&tree, "/data/f").xattrs, xattrs);

    // The access log saw skopeo fetch each layer blob once, whole.
    let fetched = registry.requests_since(mark);
    for layer in [&base, &top] {
        let gets: Vec<_> = fetched
            .iter()
            .filter(|r| r.method == "GET" && r.path().ends_with(layer.digest()))
            .collect();
        assert_eq!(gets.len(), 1, "{gets:#?}");
        assert_eq!(
            (gets[0].status, gets[0].bytes),
            (200, layer.blob().len() as u64)
        );
        assert_eq!(gets[0].user_agent, "skopeo/1.9.3");
    }
    assert_eq!(
        registry.requests_matching("PUT", "/v2/test/two/manifests/1"),
        1
    );
    assert_eq!(registry.range_requests_matching(base.digest()), 0);

    // A ranged read shows up as a 206 of the range's length.
    let client = registry.client();
    let (status, body) = client
        .get_blob_range("test/two", base.digest(), 10..110)
        .unwrap();
    assert_eq!((status, &body[..]), (206, &base.blob()[10..110]));
    assert_eq!(registry.range_requests_matching(base.digest()), 1);
    let last = registry.requests().pop().unwrap();
    assert_eq!(
        (last.status, last.bytes, last.user_agent.as_str()),
        (206, 100, "clip-testkit")
    );

    // Blobs can be corrupted in place; the registry serves the bad bytes without a check.
    let path = registry.blob_path(top.digest());
    assert_eq!(std::fs::read(&path).unwrap(), top.blob());
    std::fs::write(&path, vec![0u8; top.blob().len()]).unwrap();
    assert_eq!(
        client.get_blob("test/two", top.digest()).unwrap(),
        vec![0u8; top.blob().len()]
    );
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn auth_registry_rejects_anonymous_pushes_and_accepts_credentials() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let image = Image::new().layer(Layer::from_fixture("/hello file content=\"hi\""));
    let anonymous = image.try_push(
        &registry.anonymous_client(),
        "auth/img:1",
        ManifestFlavor::Oci,
    );
    let err = anonymous.unwrap_err().to_string();
    assert!(
        err.contains("401") && err.contains("Basic realm=\"clip-test\""),
        "{err}"
    );
    let wrong = registry
        .anonymous_client()
        .with_basic_auth("alice", "wrong");
    let err = image
        .try_push(&wrong, "auth/img:1", ManifestFlavor::Oci)
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    image.push(&registry, "auth/img:1", ManifestFlavor::Docker);
    let tree = oracle_unpack(&registry, "auth/img:1");
    assert_eq!(entry(&tree, "/hello").size, 2);
    // The access log has no user column for header auth; the application log names the user.
    let statuses: Vec<u16> = registry.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&401) && statuses.contains(&201),
        "{statuses:?}"
    );
    assert!(registry.log().contains("auth.user.name=alice"));
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn multi_platform_index_selects_each_platform() {
    let registry = Registry::start();
    for flavor in [ManifestFlavor::Oci, ManifestFlavor::Docker] {
        let mut entries = Vec::new();
        for platform in ["linux/amd64", "linux/arm64/v8"] {
            let fixture = format!("/arch file content=\"{platform}\"");
            let image = Image::new()
                .platform(platform)
                .layer(Layer::from_fixture(&fixture));
            let pushed = image.push(&registry, "multi/img", flavor);
            entries.push(pushed.index_entry());
        }
        let index = push_index(&registry, "multi/img:latest", &entries, flavor);
        assert_eq!(index.digest, sha256_digest(index.body.as_bytes()));
        for (platform, digest, _) in &entries {
            let unpacked = oracle_unpack_dir(&registry, "multi/img:latest", Some(platform));
            let content = std::fs::read_to_string(unpacked.rootfs().join("arch")).unwrap();
            assert_eq!(content, platform.to_string(), "{flavor:?}");
            // The per-platform manifest is also reachable by digest.
            let by_digest = oracle_unpack(&registry, &format!("multi/img@{digest}"));
            assert_eq!(
                by_digest["/arch"].sha256,
                unpacked.snapshot()["/arch"].sha256
            );
        }
    }
    assert_eq!(
        Platform::parse("linux/arm64/v8").variant.as_deref(),
        Some("v8")
    );
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn tar_flavours_and_compressions_unpack_alike() {
    let long_dir = format!("/{}/{}", "d".repeat(60), "e".repeat(60));
    let long_name = format!("{long_dir}/{}", "n".repeat(90));
    let fixture = format!(
        "/a dir 0755 0 0 mtime=5\n\
         /{} dir 0755 0 0 mtime=5\n\
         {long_dir} dir 0700 0 0 mtime=6\n\
         {long_name} file 0644 0 0 mtime=7 content=\"long\"\n\
         /a/link symlink target={} mtime=8\n\
         /a/hard hardlink target={long_name}\n\
         /a/big file 0644 0 0 size=200000 seed=3 text\n",
        "d".repeat(60),
        "t".repeat(150)
    );
    // Ustar has no room for link names over 100 bytes.
    let ustar_fixture: String = fixture
        .lines()
        .filter(|l| !l.contains("link "))
        .map(|l| format!("{l}\n"))
        .collect();
    let registry = Registry::start();
    let variants = [
        (TarFlavor::Pax, Compression::Gzip, false),
        (TarFlavor::Gnu, Compression::GzipMultiMember(3), true),
        (TarFlavor::Pax, Compression::ZstdMultiFrame(65536), true),
        (TarFlavor::Gnu, Compression::None, false),
    ];
    let mut reference: Option<TreeSnapshot> = None;
    for (i, (flavor, compression, dot)) in variants.into_iter().enumerate() {
        let opts = LayerOptions::default()
            .flavor(flavor)
            .compression(compression)
            .dot_prefix(dot);
        let image = Image::new().layer(Layer::from_fixture_with(&fixture, &opts));
        image.push(&registry, &format!("flavours/img:{i}"), ManifestFlavor::Oci);
        let mut tree = oracle_unpack(&registry, &format!("flavours/img:{i}"));
        // umoci gives the rootfs root the unpack time: not part of the comparison.
        tree.remove("/");
        assert_eq!(entry(&tree, &long_name).size, 4, "{flavor:?}");
        assert_eq!(entry(&tree, "/a/hard").nlink, 2, "{flavor:?}");
        match &reference {
            None => reference = Some(tree),
            Some(reference) => assert_same_tree(reference, &tree),
        }
    }
    // Ustar: the long names fit the prefix field; the long link names do not.
    let opts = LayerOptions::default().flavor(TarFlavor::Ustar);
    let image = Image::new().layer(Layer::from_fixture_with(&ustar_fixture, &opts));
    image.push(&registry, "flavours/ustar:1", ManifestFlavor::Oci);
    let tree = oracle_unpack(&registry, "flavours/ustar:1");
    assert_eq!(
        entry(&tree, &long_name).sha256.as_deref(),
        Some(&sha256_digest(b"long")[7..])
    );
    let err = Layer::try_from_fixture_with(&fixture, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("link name > 100 bytes needs Gnu or Pax"),
        "{err}"
    );
}
