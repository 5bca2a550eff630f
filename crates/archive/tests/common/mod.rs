//! Builders shared by the integration tests.
#![allow(dead_code)]

use clip_archive::*;

/// A small deterministic PRNG (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub fn meta() -> ImageMeta {
    ImageMeta {
        reference: "docker.io/library/alpine:3.20".into(),
        manifest_digest: "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        platform: Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        },
        config_digest: "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into(),
        config: r#"{"architecture":"arm64","os":"linux","config":{"Env":["PATH=/usr/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[]}}"#.into(),
    }
}

fn digest(seed: u8) -> [u8; 32] {
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    d
}

/// Three layers: gzip with windows and bits, plain tar, zstd.
pub fn layers() -> Vec<Layer> {
    let mut rng = Rng(7);
    // A window that compresses somewhat, like real text.
    let text: Vec<u8> = (0..32 * 1024)
        .map(|i| {
            b"the quick brown fox jumps over the lazy dog\n"[i % 44] ^ (rng.below(50) == 0) as u8
        })
        .collect();
    vec![
        Layer {
            digest: "sha256:1111".into(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compression: Compression::Gzip,
            compressed_size: 3_000_000,
            uncompressed_size: 10_000_000,
            diff_id: "sha256:1112".into(),
            span_size: 4 << 20,
            spans: vec![
                Span {
                    compressed_offset: 10,
                    compressed_end: 1_200_000,
                    uncompressed_offset: 0,
                    bits: 0,
                    window: Window::default(),
                    digest: digest(1),
                    content_digest: digest(11),
                },
                Span {
                    compressed_offset: 1_199_999,
                    compressed_end: 2_400_000,
                    uncompressed_offset: 4_194_400,
                    bits: 3,
                    window: Window::new(&text).unwrap(),
                    digest: digest(2),
                    content_digest: digest(12),
                },
                Span {
                    compressed_offset: 2_399_999,
                    compressed_end: 2_999_992,
                    uncompressed_offset: 8_388_900,
                    bits: 7,
                    window: Window::new(&rng.bytes(100)).unwrap(),
                    digest: digest(3),
                    content_digest: digest(13),
                },
            ],
        },
        Layer {
            digest: "sha256:2222".into(),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            compression: Compression::None,
            compressed_size: 20_480,
            uncompressed_size: 20_480,
            diff_id: "sha256:2222".into(),
            span_size: 4 << 20,
            spans: vec![Span {
                compressed_offset: 0,
                compressed_end: 20_480,
                uncompressed_offset: 0,
                bits: 0,
                window: Window::default(),
                digest: digest(4),
                content_digest: digest(14),
            }],
        },
        Layer {
            digest: "sha256:3333".into(),
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            compression: Compression::Zstd,
            compressed_size: 5_000,
            uncompressed_size: 40_960,
            diff_id: "sha256:3334".into(),
            span_size: 4 << 20,
            spans: vec![
                Span {
                    compressed_offset: 0,
                    compressed_end: 2_000,
                    uncompressed_offset: 0,
                    bits: 0,
                    window: Window::default(),
                    digest: digest(5),
                    content_digest: digest(15),
                },
                Span {
                    compressed_offset: 2_000,
                    compressed_end: 5_000,
                    uncompressed_offset: 20_480,
                    bits: 0,
                    window: Window::default(),
                    digest: digest(6),
                    content_digest: digest(16),
                },
            ],
        },
    ]
}

pub fn dir(mode: u32) -> Inode {
    Inode::new(FileType::Directory, mode)
}

pub fn file(mode: u32, size: u64, layer: u32, offset: u64) -> Inode {
    let mut i = Inode::new(FileType::Regular, mode);
    i.size = size;
    i.data = if size > 0 {
        Some(DataLocation { layer, offset })
    } else {
        None
    };
    i
}

pub fn symlink(target: &[u8]) -> Inode {
    let mut i = Inode::new(FileType::Symlink, 0o777);
    i.symlink_target = target.to_vec();
    i.size = target.len() as u64;
    i
}

pub fn device(ft: FileType, major: u32, minor: u32) -> Inode {
    let mut i = Inode::new(ft, 0o660);
    i.rdev_major = major;
    i.rdev_minor = minor;
    i
}

/// A tree with every file type, hardlinks, xattrs, long and non-UTF-8 names, special mode
/// bits, large ids, negative and nanosecond mtimes and a deep path. Returns the tree and the
/// expected (path, inode) pairs (hardlinks appear under each name).
pub fn full_tree() -> (Tree, Vec<(Vec<u8>, Inode)>) {
    let mut root = dir(0o755);
    root.mtime_sec = 1_700_000_000;
    root.mtime_nsec = 123_456_789;
    root.xattrs = vec![(b"user.root".to_vec(), b"yes".to_vec())];
    let mut t = Tree::new(root);
    let r = t.root;

    let usr = t.add(r, "usr", dir(0o755));
    let bin = t.add(usr, "bin", dir(0o755));
    t.add(r, "bin", symlink(b"usr/bin"));

    let mut passwd = file(0o4755, 68_208, 0, 512);
    passwd.mtime_sec = -1_234_567_890;
    passwd.mtime_nsec = 999_999_999;
    passwd.xattrs = vec![
        (
            b"security.capability".to_vec(),
            vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0],
        ),
        (b"user.comment".to_vec(), b"a value".to_vec()),
        (b"trusted.empty".to_vec(), Vec::new()),
    ];
    let p = t.add(bin, "passwd", passwd);
    t.link(bin, "chsh", p); // hardlink
    t.add(bin, "sgid", file(0o2711, 1000, 1, 1024));
    t.add(bin, "empty", file(0o644, 0, 0, 0));
    let mut empty_with_data = file(0o644, 0, 0, 0);
    empty_with_data.data = Some(DataLocation {
        layer: 2,
        offset: 40_960,
    });
    t.add(bin, "empty-with-data", empty_with_data);

    let tmp = t.add(r, "tmp", dir(0o1777));
    let mut sock = Inode::new(FileType::Fifo, 0o600);
    sock.uid = 4_000_000_000;
    sock.gid = 3_000_000;
    t.add(tmp, "fifo", sock);

    let nodes = t.add(r, "nodes", dir(0o755));
    t.add(nodes, "null", device(FileType::CharDevice, 1, 3));
    t.add(nodes, "sda", device(FileType::BlockDevice, 8, 0));
    t.add(nodes, "big", device(FileType::CharDevice, 4095, 1_048_575));

    let home = t.add(r, "home", dir(0o700));
    let mut user = dir(0o750);
    user.uid = 3_000_001;
    user.gid = 3_000_002;
    user.xattrs = vec![(b"user.dir".to_vec(), b"x".repeat(300))];
    let u = t.add(home, "user", user);
    t.add(u, vec![b'a'; 200], file(0o600, 10, 0, 9_999_990));
    t.add(u, b"caf\xe9".to_vec(), file(0o640, 1, 1, 20_479));
    let mut link = symlink(b"../../usr/bin/passwd");
    link.xattrs = vec![(b"trusted.link".to_vec(), b"1".to_vec())];
    t.add(u, "link", link);
    t.add(u, "abs", symlink(&b"/very/long/".repeat(100)));
    t.add(u, "empty-target", symlink(b""));
    // Another hardlink to passwd, from elsewhere: nlink 3.
    t.link(u, "passwd-copy", p);

    // A deep path.
    let mut d = r;
    for i in 0..40 {
        d = t.add(d, format!("deep{i}"), dir(0o755));
    }
    t.add(d, "bottom.txt", file(0o644, 5, 2, 100));

    // Unreachable inodes are dropped.
    t.push(file(0o644, 1, 0, 0));
    t.push(dir(0o755));

    let expected = walk_tree(&t);
    (t, expected)
}

/// All (path, inode) pairs of a tree, by a straightforward recursion.
pub fn walk_tree(t: &Tree) -> Vec<(Vec<u8>, Inode)> {
    fn rec(t: &Tree, idx: usize, path: &[u8], out: &mut Vec<(Vec<u8>, Inode)>) {
        out.push((
            if path.is_empty() {
                b"/".to_vec()
            } else {
                path.to_vec()
            },
            t.inodes[idx].clone(),
        ));
        if let Some(kids) = t.children.get(idx) {
            for (name, c) in kids {
                let mut p = path.to_vec();
                p.push(b'/');
                p.extend_from_slice(name);
                rec(t, *c, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(t, t.root, b"", &mut out);
    out
}

/// A synthetic image tree: `files` files spread over `dirs` directories (a few levels deep),
/// with names like real ones (about 12 bytes on average), few distinct modes and owners.
pub fn synthetic_tree(files: usize, dirs: usize, seed: u64) -> Tree {
    const STEMS: [&str; 24] = [
        "__init__", "utils", "core", "test", "base", "config", "types", "io", "README", "lib",
        "main", "index", "parser", "common", "helpers", "api", "models", "setup", "errors",
        "version", "client", "server", "data", "cache",
    ];
    const EXTS: [&str; 8] = ["py", "pyc", "so", "h", "txt", "json", "js", "md"];
    let mut rng = Rng(seed);
    let mut t = Tree::new(dir(0o755));
    let mut all_dirs = vec![t.root];
    for i in 0..dirs {
        let parent = all_dirs[rng.below(all_dirs.len() as u64) as usize];
        let name = format!("{}{}", STEMS[rng.below(24) as usize], i);
        let d = t.add(parent, name, dir(0o755));
        all_dirs.push(d);
    }
    let mut layer_off = 0u64;
    for i in 0..files {
        let parent = all_dirs[rng.below(all_dirs.len() as u64) as usize];
        let stem = STEMS[rng.below(24) as usize];
        let ext = EXTS[rng.below(8) as usize];
        // Names repeat a lot in real images (__init__.py in every package); make a third of
        // them common names, the rest unique.
        let name = if rng.below(3) == 0 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}_{i}.{ext}")
        };
        let mode = if rng.below(10) == 0 { 0o755 } else { 0o644 };
        let size = rng.below(100_000);
        let mut f = file(mode, size, 0, layer_off + 512);
        f.mtime_sec = 1_700_000_000;
        layer_off += 512 + size.div_ceil(512) * 512;
        if t.children[parent].iter().any(|(n, _)| n == name.as_bytes()) {
            continue;
        }
        t.add(parent, name, f);
    }
    t
}

/// A plain layer big enough for `synthetic_tree` data, with one span per 4 MiB.
pub fn synthetic_layer() -> Layer {
    let size = 1u64 << 40;
    Layer {
        digest: "sha256:5555".into(),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        compression: Compression::None,
        compressed_size: size,
        uncompressed_size: size,
        diff_id: "sha256:5555".into(),
        span_size: 4 << 20,
        spans: (0..64u64)
            .map(|i| Span {
                compressed_offset: i << 22,
                compressed_end: (i + 1) << 22,
                uncompressed_offset: i << 22,
                bits: 0,
                window: Window::default(),
                digest: [i as u8; 32],
                content_digest: [!(i as u8); 32],
            })
            .collect(),
    }
}

/// A small archive with an entry of every kind (a hardlink, an xattr), three layers and one
/// seek window.
pub fn small_archive() -> Vec<u8> {
    let mut t = Tree::new(dir(0o755));
    let d = t.add(0, "etc", dir(0o755));
    let mut f = file(0o644, 5, 0, 512);
    f.xattrs = vec![(b"user.a".to_vec(), b"b".to_vec())];
    let f = t.add(d, "hosts", f);
    t.link(0, "hosts-link", f);
    t.add(0, "sh", symlink(b"busybox"));
    t.add(0, "null", device(FileType::CharDevice, 1, 3));
    let mut l = layers();
    l[0].spans.truncate(2);
    l[0].spans[1].window = Window::new(&[7; 64]).unwrap();
    write_archive(&meta(), &l, &t).unwrap()
}
