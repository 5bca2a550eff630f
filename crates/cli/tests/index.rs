//! `clip index` and `clip inspect` against a real registry started by each test, and which
//! registry `--creds` are for (`clip index`, `clip mount`).

mod support;

use clip_testkit::{
    oracle_unpack, push_index, Compression, Image, Layer, LayerOptions, ManifestFlavor, Registry,
    TarFlavor,
};
use support::*;

fn base_fixture() -> String {
    include_str!("fixtures/base.txt").to_string()
}

const TOP_FIXTURE: &str = include_str!("fixtures/top.txt");

fn main_image(flavor: TarFlavor) -> Image {
    let options = LayerOptions::default()
        .flavor(flavor)
        .compression(Compression::Gzip);
    let (base, top) = match flavor {
        TarFlavor::Pax => (base_fixture(), TOP_FIXTURE.to_string()),
        _ => (
            without_pax_only(&base_fixture()),
            without_pax_only(TOP_FIXTURE),
        ),
    };
    Image::new()
        .layer(Layer::from_fixture_with(&base, &options))
        .layer(Layer::from_fixture_with(&top, &options))
}

/// Drops what only PAX can say (xattrs, sub-second mtimes) from a fixture.
fn without_pax_only(fixture: &str) -> String {
    fixture
        .lines()
        .map(|line| {
            line.split_whitespace()
                .filter(|t| !t.starts_with("xattr."))
                .map(|t| match t.strip_prefix("mtime=") {
                    Some(m) => format!("mtime={}", m.split('.').next().unwrap_or(m)),
                    None => t.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn index_matches_umoci_unpack() {
    let registry = Registry::start();
    main_image(TarFlavor::Pax).push(&registry, "main:1", ManifestFlavor::Oci);
    let scratch = Scratch::new();
    let archive = scratch.path("main.clip");
    index(&registry, "main:1", &archive, &[]);

    let mut expected = without_content(oracle_unpack(&registry, "main:1"));
    for runtime in ["/proc", "/sys", "/dev"] {
        expected.remove_subtree(runtime);
    }
    // The unpacked root counted the three runtime directories among its subdirectories.
    if let Some(root) = expected.0.get_mut("/") {
        root.nlink -= 3;
    }
    let actual = snapshot_of_archive(&archive);
    clip_testkit::assert_same_tree(&expected, &actual);

    // And what the fixtures say, independently of umoci.
    for present in [
        "/",
        "/etc",
        "/usr",
        "/usr/bin/tool",
        "/bin",
        "/opt/app/c",
        "/ids/f",
    ] {
        assert!(actual.contains_key(present), "{present} missing");
    }
    for absent in [
        "/proc",
        "/sys",
        "/dev",
        "/etc/old.conf",
        "/var/cache",
        "/opt/app/a",
        "/opt/app/sub",
    ] {
        assert!(!actual.contains_key(absent), "{absent} should be gone");
    }
    assert_eq!(actual["/bin"].link_target.as_deref(), Some("usr/bin"));
    assert_eq!(actual["/usr/bin/tool"].mode, 0o4755);
    assert_eq!(actual["/tmp"].mode, 0o1777);
    assert_eq!(actual["/ids/f"].uid, 4294967294);
    assert_eq!(actual["/etc/hostname"].mtime_nsec, 500_000_000);
    assert_eq!(actual["/srv/disk"].rdev, Some((8, 1)));
    assert_eq!(
        actual["/data/x"].xattrs["user.bin"],
        vec![0xde, 0xad, 0xbe, 0xef]
    );
    assert_eq!(actual["/usr/bin/hl"].ino, actual["/usr/bin/tool"].ino);
    assert_eq!(actual["/usr/bin/hl"].nlink, 2);
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn tar_dialects_index_identically() {
    // Ustar cannot say long names, sub-second times, big ids or xattrs: a fixture it can carry,
    // written in all three dialects, with `./` names and a PAX global header for good measure.
    let fixture = r#"
/etc           dir   0755 0 0
/etc/a         file  0644 0 0 content="a"
/etc/l         symlink 0777 0 0 target=a
/etc/h         hardlink target=/etc/a
/etc/p         fifo  0600 0 0
"#;
    let registry = Registry::start();
    let scratch = Scratch::new();
    let mut listings = Vec::new();
    for (i, flavor) in [TarFlavor::Ustar, TarFlavor::Gnu, TarFlavor::Pax]
        .into_iter()
        .enumerate()
    {
        let mut options = LayerOptions::default()
            .flavor(flavor)
            .dot_prefix(i % 2 == 0);
        if flavor == TarFlavor::Pax {
            options = options.global_header(&[("comment", "global headers are not entries")]);
        }
        let tag = format!("dialect:{i}");
        Image::new()
            .layer(Layer::from_fixture_with(fixture, &options))
            .push(&registry, &tag, ManifestFlavor::Oci);
        let out = scratch.path(&format!("{i}.clip"));
        index(&registry, &tag, &out, &[]);
        listings.push(snapshot_of_archive(&out));
    }
    assert_eq!(listings[0], listings[1], "ustar vs gnu");
    assert_eq!(listings[0], listings[2], "ustar vs pax");
    assert_eq!(
        listings[0].keys().cloned().collect::<Vec<_>>(),
        ["/", "/etc", "/etc/a", "/etc/h", "/etc/l", "/etc/p"]
    );

    // Long names and big ids in GNU form agree with the PAX form of the main fixture.
    for (tag, flavor) in [("gnu:1", TarFlavor::Gnu), ("pax:1", TarFlavor::Pax)] {
        main_image(flavor).push(&registry, tag, ManifestFlavor::Oci);
    }
    let (gnu, pax) = (scratch.path("gnu.clip"), scratch.path("pax.clip"));
    index(&registry, "gnu:1", &gnu, &[]);
    index(&registry, "pax:1", &pax, &[]);
    let (mut gnu, pax) = (snapshot_of_archive(&gnu), snapshot_of_archive(&pax));
    // GNU tar has no xattrs and no sub-second mtimes.
    for (path, e) in gnu.0.iter_mut() {
        let p = &pax[path];
        e.xattrs = p.xattrs.clone();
        e.mtime_nsec = p.mtime_nsec;
    }
    clip_testkit::assert_same_tree(&pax, &gnu);
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn compressions_give_the_same_tree() {
    let fixture = format!(
        "/usr dir 0755 0 0\n/usr/big file 0644 0 0 size=3000000 seed=9 text\n{}",
        (0..40)
            .map(|i| format!("/usr/f{i} file 0644 0 0 size={} seed={i}\n", 1000 * i))
            .collect::<String>()
    );
    let registry = Registry::start();
    let scratch = Scratch::new();
    let cases = [
        ("gzip", Compression::Gzip),
        ("gzipmm", Compression::GzipMultiMember(3)),
        ("zstd", Compression::Zstd),
        ("zstdmf", Compression::ZstdMultiFrame(256 * 1024)),
        ("none", Compression::None),
    ];
    let mut trees = Vec::new();
    for (tag, compression) in cases {
        let options = LayerOptions::default().compression(compression);
        Image::new()
            .layer(Layer::from_fixture_with(&fixture, &options))
            .push(&registry, &format!("comp:{tag}"), ManifestFlavor::Oci);
        let out = scratch.path(&format!("{tag}.clip"));
        index(&registry, &format!("comp:{tag}"), &out, &["--span", "256k"]);
        let info = inspect_json(&out);
        let layer = &info["layers"][0];
        assert_eq!(
            layer["compression"],
            if tag.starts_with("gzip") {
                "gzip"
            } else if tag.starts_with("zstd") {
                "zstd"
            } else {
                "none"
            }
        );
        let spans = layer["spans"].as_u64().unwrap();
        match tag {
            // One frame: one span, fetched whole.
            "zstd" => assert_eq!(spans, 1),
            // Frame runs of at least the span size.
            "zstdmf" => assert!((10..=16).contains(&spans), "{spans} spans"),
            _ => assert!(spans >= 10, "{tag}: {spans} spans"),
        }
        trees.push((tag, snapshot_of_archive(&out)));
    }
    for (tag, tree) in &trees[1..] {
        assert_eq!(&trees[0].1, tree, "gzip vs {tag}");
    }
    let oracle = without_content(oracle_unpack(&registry, "comp:gzip"));
    clip_testkit::assert_same_tree(&oracle, &trees[0].1);
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn docker_manifests_and_multi_arch_indexes() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let amd = Image::new()
        .layer(Layer::from_fixture("/arch file 0644 0 0 content=\"amd64\""))
        .platform("linux/amd64")
        .push(&registry, "multi:amd64", ManifestFlavor::Docker);
    let arm = Image::new()
        .layer(Layer::from_fixture(
            "/arch file 0644 0 0 content=\"arm64\"\n/only-arm file 0644 0 0 content=\"\"",
        ))
        .platform("linux/arm64/v8")
        .push(&registry, "multi:arm64", ManifestFlavor::Docker);
    push_index(
        &registry,
        "multi:docker",
        &[amd.index_entry(), arm.index_entry()],
        ManifestFlavor::Docker,
    );
    push_index(
        &registry,
        "multi:oci",
        &[amd.index_entry(), arm.index_entry()],
        ManifestFlavor::Oci,
    );

    for tag in ["multi:docker", "multi:oci"] {
        let out = scratch.path("arm.clip");
        index(&registry, tag, &out, &["--platform", "linux/arm64"]);
        let info = inspect_json(&out);
        assert_eq!(info["image"]["platform"], "linux/arm64/v8");
        assert_eq!(
            info["image"]["manifest_digest"],
            arm.manifest_digest.as_str()
        );
        assert!(listing(&out).contains_key("/only-arm"));

        index(&registry, tag, &out, &["--platform", "linux/amd64"]);
        let info = inspect_json(&out);
        assert_eq!(
            info["image"]["manifest_digest"],
            amd.manifest_digest.as_str()
        );
        assert_eq!(
            info["layers"][0]["media_type"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert!(!listing(&out).contains_key("/only-arm"));

        let err = clip(&[
            "index",
            "--quiet",
            "--platform",
            "linux/s390x",
            &image_ref(&registry, tag),
            out.to_str().unwrap(),
        ])
        .failure();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm64"),
            "{err}"
        );
    }
    // A Docker v2 manifest pulled by digest.
    let out = scratch.path("bydigest.clip");
    index(
        &registry,
        &format!("multi@{}", amd.manifest_digest),
        &out,
        &[],
    );
    assert_eq!(
        inspect_json(&out)["image"]["manifest_media_type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn credentials_from_flags_and_auth_files() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    Image::new()
        .layer(Layer::from_fixture("/hello file 0644 0 0 content=\"hi\""))
        .push(&registry, "private:1", ManifestFlavor::Oci);
    let scratch = Scratch::new();
    let out = scratch.path("p.clip");
    let image = image_ref(&registry, "private:1");
    let out_s = out.to_str().unwrap();

    let err = clip(&["index", "--quiet", &image, out_s]).failure();
    assert!(err.contains("credentials"), "anonymous: {err}");
    let err = clip(&["index", "--quiet", "--creds", "alice:wrong", &image, out_s]).failure();
    assert!(err.contains("credentials"), "wrong password: {err}");
    assert!(
        !err.contains("wrong\n") && !err.contains("s3cret"),
        "secrets stay out of messages"
    );
    clip(&["index", "--quiet", "--creds", "alice:s3cret", &image, out_s]).success();
    assert!(listing(&out).contains_key("/hello"));

    // containers-auth.json and the docker config, `auths` entries.
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let auth_json = format!(
        r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
        registry.addr()
    );
    let auth_file = scratch.path("auth.json");
    std::fs::write(&auth_file, &auth_json).unwrap();
    std::fs::remove_file(&out).unwrap();
    let run = clip_command()
        .args(["index", "--quiet", &image, out_s])
        .env("REGISTRY_AUTH_FILE", &auth_file)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "REGISTRY_AUTH_FILE: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let docker_dir = scratch.path("docker");
    std::fs::create_dir(&docker_dir).unwrap();
    std::fs::write(docker_dir.join("config.json"), &auth_json).unwrap();
    let run = clip_command()
        .args(["index", "--quiet", &image, out_s])
        .env("DOCKER_CONFIG", &docker_dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "DOCKER_CONFIG: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// A registry that wants `alice` with a password holding `=` and `:`, with one small image.
fn private_registry() -> (Registry, &'static str) {
    const PASSWORD: &str = "pa=ss:w0rd";
    let registry = Registry::start_with_auth("alice", PASSWORD);
    Image::new()
        .layer(Layer::from_fixture("/hello file 0644 0 0 content=\"hi\""))
        .push(&registry, "private:1", ManifestFlavor::Oci);
    (registry, PASSWORD)
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn creds_naming_their_registry_work_for_index_and_mount() {
    let (registry, password) = private_registry();
    let scratch = Scratch::new();
    let out = scratch.path("p.clip");
    let out_s = out.to_str().unwrap();
    let image = image_ref(&registry, "private:1");
    let creds = format!("{}=alice:{password}", registry.addr());

    clip(&["index", "--quiet", "--creds", &creds, &image, out_s]).success();
    assert!(listing(&out).contains_key("/hello"));
    // The same through the environment, and the plain form for the image typed here.
    std::fs::remove_file(&out).unwrap();
    let run = clip_command()
        .args(["index", "--quiet", &image, out_s])
        .env("CLIP_CREDS", &creds)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "CLIP_CREDS: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let plain = format!("alice:{password}");
    clip(&["index", "--quiet", "--creds", &plain, &image, out_s]).success();

    // The mount reads its blobs with them.
    let mount = Mount::start(
        &out,
        &scratch.path("mnt"),
        &scratch.path("cache"),
        &["--creds", &creds],
    );
    let hello = std::fs::read_to_string(mount.dir.join("hello")).unwrap();
    assert_eq!(hello, "hi");
    let log = mount.unmount();
    assert!(!log.contains(password), "the password stays out of the log");
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn plain_creds_are_refused_for_a_mount() {
    let (registry, password) = private_registry();
    let scratch = Scratch::new();
    let out = scratch.path("p.clip");
    let out_s = out.to_str().unwrap();
    let plain = format!("alice:{password}");
    let image = image_ref(&registry, "private:1");
    clip(&["index", "--quiet", "--creds", &plain, &image, out_s]).success();

    let mark = registry.log_mark();
    let dir = scratch.path("mnt");
    let dir_s = dir.to_str().unwrap();
    let by_flag = clip(&["mount", "--creds", &plain, out_s, dir_s]).failure();
    let by_env = clip_command()
        .args(["mount", out_s, dir_s])
        .env("CLIP_CREDS", &plain)
        .output()
        .unwrap();
    assert!(!by_env.status.success());
    let by_env = String::from_utf8_lossy(&by_env.stderr).into_owned();
    for err in [&by_flag, &by_env] {
        let fix = format!("--creds {}=USER:PASS", registry.addr());
        assert!(
            err.contains("p.clip") && err.contains(registry.addr()) && err.contains(&fix),
            "{err}"
        );
        assert!(!err.contains(password), "{err}");
    }
    assert!(
        registry.requests_since(mark).is_empty(),
        "nothing was sent to the registry the file names"
    );
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn creds_for_another_registry_are_not_used() {
    let (registry, password) = private_registry();
    let scratch = Scratch::new();
    let out = scratch.path("p.clip");
    let out_s = out.to_str().unwrap();
    let image = image_ref(&registry, "private:1");
    // The right user and password, named for another registry (another port of this host).
    let port: u16 = registry.addr().rsplit(':').next().unwrap().parse().unwrap();
    let elsewhere = format!("127.0.0.1:{}", port.wrapping_add(1).max(1));
    let wrong = format!("{elsewhere}=alice:{password}");

    let err = clip(&["index", "--quiet", "--creds", &wrong, &image, out_s]).failure();
    assert!(
        err.contains(&format!("--creds are for {elsewhere}")) && err.contains("not using them"),
        "warns: {err}"
    );
    assert!(err.contains("anonymous access refused"), "not sent: {err}");
    assert!(!out.exists());

    // The registry then gets what the auth files say about it.
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
    let auth_file = scratch.path("auth.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.addr()
        ),
    )
    .unwrap();
    let run = clip_command()
        .args(["index", "--quiet", "--creds", &wrong, &image, out_s])
        .env("REGISTRY_AUTH_FILE", &auth_file)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "falls back to the auth file: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    // A mount of that index with them: warned about, not used, so not mounted.
    let err = match Mount::try_start(
        &out,
        &scratch.path("mnt"),
        &scratch.path("cache"),
        &["--creds", &wrong],
    ) {
        Ok(_) => panic!("mounted with credentials named for another registry"),
        Err(e) => e,
    };
    assert!(
        err.contains(&format!("--creds are for {elsewhere}")) && err.contains("p.clip"),
        "warns: {err}"
    );
    assert!(err.contains("anonymous access refused"), "not sent: {err}");
    assert!(!err.contains(password), "{err}");
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn missing_tags_repositories_and_corrupt_blobs_are_clear_errors() {
    let registry = Registry::start();
    let pushed = Image::new()
        .layer(Layer::from_fixture(
            "/f file 0644 0 0 size=200000 seed=4 text
",
        ))
        .push(&registry, "present:1", ManifestFlavor::Oci);
    let scratch = Scratch::new();
    let out = scratch.path("x.clip");
    let out_s = out.to_str().unwrap();

    let err = clip(&[
        "index",
        "--quiet",
        &image_ref(&registry, "present:nope"),
        out_s,
    ])
    .failure();
    assert!(
        err.contains("present:nope") && err.contains("no such tag"),
        "{err}"
    );
    let err = clip(&["index", "--quiet", &image_ref(&registry, "absent:1"), out_s]).failure();
    assert!(
        err.contains("absent")
            && (err.contains("no such repository") || err.contains("no such tag")),
        "{err}"
    );
    let err = clip(&["index", "--quiet", "Bad//Name", out_s]).failure();
    assert!(err.contains("Bad//Name"), "{err}");
    assert!(!out.exists(), "no archive after a failure");

    // Same size, one byte flipped in the registry's own storage.
    let digest = &pushed.layers[0].digest;
    let path = registry.blob_path(digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let err = clip(&[
        "index",
        "--quiet",
        &image_ref(&registry, "present:1"),
        out_s,
    ])
    .failure();
    assert!(err.contains(digest.as_str()), "names the layer: {err}");
    assert!(!out.exists(), "no archive after a failure");
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn archives_are_deterministic_small_and_inspectable() {
    // A small image: a few MB in a few hundred files.
    let mut fixture = String::from("/usr dir 0755 0 0\n/usr/share dir 0755 0 0\n");
    for d in 0..20 {
        fixture.push_str(&format!("/usr/share/pkg{d} dir 0755 0 0\n"));
        for f in 0..15 {
            fixture.push_str(&format!(
                "/usr/share/pkg{d}/file{f}.txt file 0644 0 0 size={} seed={} text\n",
                2000 + 700 * f,
                d * 100 + f
            ));
        }
    }
    fixture.push_str("/usr/share/big.bin file 0644 0 0 size=2500000 seed=77\n");
    let registry = Registry::start();
    Image::new()
        .layer(Layer::from_fixture(&fixture))
        .layer(Layer::from_fixture(
            "/etc dir 0755 0 0\n/etc/os-release file 0644 0 0 content=\"ID=clip\\n\"",
        ))
        .push(&registry, "small:1", ManifestFlavor::Oci);
    let scratch = Scratch::new();
    let (a, b) = (scratch.path("a.clip"), scratch.path("b.clip"));
    let summary = index(&registry, "small:1", &a, &["--jobs", "1"]).stdout();
    assert!(
        summary.contains("entries") && summary.contains("2 layers"),
        "{summary}"
    );
    index(&registry, "small:1", &b, &["--jobs", "2"]);
    let (a_bytes, b_bytes) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(
        a_bytes == b_bytes,
        "indexing twice must give identical bytes"
    );
    // What a node downloads is the metadata; the seek windows (up to 32 KiB a checkpoint,
    // compressed) stay in the registry.
    let metadata_len = u64::from_le_bytes(a_bytes[40..48].try_into().unwrap());
    assert!(
        metadata_len < 64 * 1024 && a_bytes.len() < 1024 * 1024,
        "archive of a small image is {} bytes, {metadata_len} of metadata",
        a_bytes.len()
    );

    let info = inspect_json(&a);
    assert_eq!(info["entries"]["regular"], 302);
    assert_eq!(info["entries"]["directories"], 24);
    assert_eq!(info["layers"].as_array().unwrap().len(), 2);
    assert_eq!(info["image"]["config"]["rootfs"]["type"], "layers");
    assert!(
        info["bytes_per_entry"].as_f64().unwrap() <= 64.0,
        "{}",
        info["bytes_per_entry"]
    );

    let text = clip(&["inspect", a.to_str().unwrap()]).success().stdout();
    for field in [
        "image", "digest", "platform", "created", "layers", "entries", "content", "index", "spans",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(field)),
            "summary lacks {field}:\n{text}"
        );
    }
    let ls = clip(&["inspect", "--ls", "/etc", a.to_str().unwrap()])
        .success()
        .stdout();
    assert_eq!(
        ls,
        "-rw-r--r--   1     0     0          8 2023-11-14 22:13 os-release\n"
    );

    // A damaged archive is an error, never a panic.
    // (In the metadata: a damaged window is found when its span is read.)
    let mut damaged = a_bytes.clone();
    let at = metadata_len as usize / 2;
    damaged[at] ^= 0xff;
    let bad = scratch.path("bad.clip");
    std::fs::write(&bad, &damaged).unwrap();
    let err = clip(&["inspect", bad.to_str().unwrap()]).failure();
    assert!(err.contains("checksum") || err.contains("corrupt"), "{err}");
    std::fs::write(&bad, &a_bytes[..a_bytes.len() / 3]).unwrap();
    let err = clip(&["inspect", bad.to_str().unwrap()]).failure();
    assert!(err.contains("truncated"), "{err}");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n not an archive").unwrap();
    let err = clip(&["inspect", bad.to_str().unwrap()]).failure();
    assert!(err.contains("not a .clip index"), "{err}");
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn hostile_layers_are_refused_or_contained() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let out = scratch.path("h.clip");
    let out_s = out.to_str().unwrap();

    // `..` never climbs out of the root; absolute names are made relative.
    Image::new()
        .layer(Layer::from_fixture(
            "/a dir 0755 0 0\n/a/x file 0644 0 0 content=\"x\" name=../../escape\n/a/y file 0644 0 0 content=\"y\" name=/abs/./y\n",
        ))
        .push(&registry, "escape:1", ManifestFlavor::Oci);
    index(&registry, "escape:1", &out, &[]);
    let paths: Vec<String> = listing(&out).into_keys().collect();
    assert_eq!(paths, ["/", "/a", "/abs", "/abs/y", "/escape"]);

    // Sparse files are refused with the entry named.
    Image::new()
        .layer(Layer::from_fixture(
            "/s file 0644 0 0 content=\"s\" pax.GNU.sparse.major=1 pax.GNU.sparse.minor=0",
        ))
        .push(&registry, "sparse:1", ManifestFlavor::Oci);
    let err = clip(&["index", "--quiet", &image_ref(&registry, "sparse:1"), out_s]).failure();
    assert!(err.contains("sparse") && err.contains("\"s\""), "{err}");

    // A hardlink to nothing names the link and its target.
    Image::new()
        .layer(Layer::from_fixture("/l hardlink target=/missing"))
        .push(&registry, "dangling:1", ManifestFlavor::Oci);
    let err = clip(&[
        "index",
        "--quiet",
        &image_ref(&registry, "dangling:1"),
        out_s,
    ])
    .failure();
    assert!(err.contains("/l") && err.contains("/missing"), "{err}");
}
