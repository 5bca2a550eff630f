//! Tar torture: layers written header by header ([`RawTar`]), pushed to a real registry, indexed
//! with the real `clip` binary and compared with `umoci unpack`. Where umoci refuses an input,
//! clip must refuse it too, with a one-line message that names the layer, the offset and the
//! entry once.

mod support;

use clip_testkit::rawtar::field;
use clip_testkit::{
    assert_same_tree, oracle_unpack, try_oracle_unpack, Compression, Image, Layer, LayerOptions,
    ManifestFlavor, RawHeader, RawTar, Registry, TreeSnapshot,
};
use support::*;

fn layer(tar: Vec<u8>) -> Layer {
    Layer::from_tar(tar, Compression::Gzip, &LayerOptions::default())
}

fn push(registry: &Registry, tag: &str, layers: Vec<Vec<u8>>) -> Vec<String> {
    let image = layers
        .into_iter()
        .fold(Image::new(), |image, tar| image.layer(layer(tar)));
    let pushed = image.push(registry, tag, ManifestFlavor::Oci);
    pushed.layers.into_iter().map(|l| l.digest).collect()
}

/// Indexes the image and compares it with umoci's unpack. `unstamped` are paths whose mtime is
/// not compared: directories an unpack creates on the fly (and their parents) get "now".
fn same_as_umoci(
    registry: &Registry,
    tag: &str,
    layers: Vec<Vec<u8>>,
    unstamped: &[&str],
) -> TreeSnapshot {
    push(registry, tag, layers);
    let scratch = Scratch::new();
    let archive = scratch.path("a.clip");
    index(registry, tag, &archive, &[]);
    let actual = snapshot_of_archive(&archive);
    let mut expected = without_content(oracle_unpack(registry, tag));
    for path in unstamped {
        if let (Some(e), Some(a)) = (expected.0.get_mut(*path), actual.get(*path)) {
            (e.mtime_sec, e.mtime_nsec) = (a.mtime_sec, a.mtime_nsec);
        }
    }
    assert_same_tree(&expected, &actual);
    actual
}

/// Pushes the image, checks that umoci refuses it and that clip does too; returns clip's
/// message after checking its form.
fn both_refuse(registry: &Registry, tag: &str, layers: Vec<Vec<u8>>) -> String {
    let digests = push(registry, tag, layers);
    let umoci = try_oracle_unpack(registry, tag);
    assert!(umoci.is_err(), "{tag}: umoci accepted it");
    clip_refuses(registry, tag, &digests)
}

/// Runs `clip index`, expects a failure and checks the message: one line, the image and the
/// failing layer named once, never "bug".
fn clip_refuses(registry: &Registry, tag: &str, digests: &[String]) -> String {
    let scratch = Scratch::new();
    let out = scratch.path("x.clip");
    let image = image_ref(registry, tag);
    let err = clip(&["index", "--quiet", &image, out.to_str().unwrap()]).failure();
    let line = err.trim_end();
    assert!(!line.contains('\n'), "{tag}: one line expected:\n{err}");
    assert!(
        !line.contains("bug"),
        "{tag}: input errors are not bugs: {line}"
    );
    assert!(line.len() < 500, "{tag}: {} bytes: {line}", line.len());
    assert_eq!(line.matches(image.as_str()).count(), 1, "{line}");
    let named = digests.iter().filter(|d| line.contains(d.as_str())).count();
    assert_eq!(named, 1, "{tag}: the failing layer, once: {line}");
    assert!(!out.exists());
    line.to_string()
}

fn file(name: &[u8], data: &[u8]) -> (RawHeader, Vec<u8>) {
    (RawHeader::new(name, b'0', data.len() as u64), data.to_vec())
}

fn dir(name: &[u8]) -> RawHeader {
    RawHeader::new(name, b'5', 0).mode(0o755)
}

fn symlink(name: &[u8], target: &[u8]) -> RawHeader {
    RawHeader::new(name, b'2', 0).mode(0o777).linkname(target)
}

fn hardlink(name: &[u8], target: &[u8]) -> RawHeader {
    RawHeader::new(name, b'1', 0).linkname(target)
}

trait Add {
    fn file(self, name: &[u8], data: &[u8]) -> Self;
}

impl Add for RawTar {
    fn file(self, name: &[u8], data: &[u8]) -> Self {
        let (h, d) = file(name, data);
        self.entry(h, &d)
    }
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn header_only_types_with_a_size_swallow_nothing() {
    let registry = Registry::start();
    // Each of these claims 512 bytes of data; none has any: the next header follows at once.
    let tar = RawTar::new()
        .file(b"f0", b"zero")
        .header(RawHeader::new(b"d/", b'5', 512).mode(0o755))
        .header(hardlink(b"d/h", b"f0").octal(field::SIZE, 12, 512))
        .header(symlink(b"d/s", b"../f0").octal(field::SIZE, 12, 512))
        .header(RawHeader::new(b"d/p", b'6', 512))
        .header(
            RawHeader::new(b"d/c", b'3', 512)
                .octal(field::DEVMAJOR, 8, 1)
                .octal(field::DEVMINOR, 8, 3),
        )
        .file(b"d/after", b"still here")
        .finish();
    let tree = same_as_umoci(&registry, "sized:1", vec![tar], &[]);
    for path in ["/d/h", "/d/s", "/d/p", "/d/c", "/d/after"] {
        assert!(tree.contains_key(path), "{path} missing");
    }
    assert_eq!(tree["/d/h"].ino, tree["/f0"].ino);
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn whiteout_after_a_sized_directory_header_is_applied() {
    let registry = Registry::start();
    let lower = RawTar::new().file(b"secret.txt", b"s3cret").finish();
    let upper = RawTar::new()
        .header(RawHeader::new(b"x/", b'5', 512).mode(0o755))
        .entry(RawHeader::new(b".wh.secret.txt", b'0', 0), b"")
        .finish();
    let tree = same_as_umoci(&registry, "wh:1", vec![lower, upper], &[]);
    assert!(!tree.contains_key("/secret.txt"));
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn legacy_headers_and_numeric_fields_read_as_go_does() {
    let registry = Registry::start();
    let tar = RawTar::new()
        // V7: no magic; typeflag NUL is a directory when the name ends in '/'.
        .header(RawHeader::new(b"olddir/", 0, 0).mode(0o750).v7())
        .entry(RawHeader::new(b"olddir/v7file", 0, 3).v7(), b"old")
        // Numbers with spaces, all NULs, all spaces; base-256 owner and negative mtime.
        .entry(
            RawHeader::new(b"spaced", b'0', 2)
                .field(field::MODE, b"  640 \0 ")
                .field(field::UID, &[0; 8])
                .field(field::GID, b"        ")
                .field(field::SIZE, b"         2 \0"),
            b"ok",
        )
        .entry(
            RawHeader::new(b"big-owner", b'0', 0)
                .gnu()
                .base256(field::UID, 8, 3_000_000)
                .base256(field::GID, 8, 4_000_000_000)
                .base256(field::MTIME, 12, -86_400),
            b"",
        )
        // Signed checksums (old writers) over a non-ASCII name.
        .entry(
            RawHeader::new("caf\u{e9}".as_bytes(), b'0', 1).signed_checksum(),
            b"c",
        )
        // The ustar prefix, and star's shorter prefix.
        .header(dir(b"pre/"))
        .entry(
            RawHeader::new(b"ustar-name", b'0', 1).field(field::PREFIX, b"pre"),
            b"u",
        )
        .entry(
            RawHeader::new(b"star-name", b'0', 1)
                .field(field::PREFIX, b"pre")
                .field(field::STAR_TRAILER, b"tar\0"),
            b"s",
        )
        .finish();
    let tree = same_as_umoci(&registry, "legacy:1", vec![tar], &[]);
    assert_eq!(tree["/olddir"].kind, "dir");
    assert_eq!(tree["/spaced"].mode, 0o640);
    assert_eq!(tree["/big-owner"].uid, 3_000_000);
    assert_eq!(tree["/big-owner"].mtime_sec, -86_400);
    assert!(tree.contains_key("/caf\u{e9}"));
    assert!(tree.contains_key("/pre/ustar-name") && tree.contains_key("/pre/star-name"));
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn gnu_long_names_and_pax_records_apply_as_in_go() {
    let registry = Registry::start();
    let long = format!("{}/file", "long".repeat(40));
    let mut long_nul = long.clone().into_bytes();
    long_nul.extend_from_slice(b"\0junk after the NUL");
    let tar = RawTar::new()
        .gnu_long(b'L', format!("{}/\0", &long[..160]).as_bytes())
        .header(dir(b"dir-name-in-the-long-name").gnu())
        .gnu_long(b'L', &long_nul)
        .entry(RawHeader::new(b"truncated", b'0', 1).gnu(), b"L")
        .gnu_long(b'K', format!("{long}\0more").as_bytes())
        .header(symlink(b"to-long", b"short").gnu())
        // A later PAX header replaces an earlier one; an empty value keeps the header's field.
        .pax(b'x', &[("path", b"lost")])
        .pax(
            b'x',
            &[
                ("path", b"pax-file"),
                ("uid", b"3000000"),
                ("gid", b"+42"),
                ("mtime", b"1700000000.25"),
                ("SCHILY.xattr.user.a", b"1"),
                ("SCHILY.xattr.user.empty", b""),
            ],
        )
        .entry(RawHeader::new(b"ustar-file-name", b'0', 1), b"p")
        .pax(b'x', &[("path", b""), ("mtime", b"-1.5")])
        .entry(RawHeader::new(b"kept-name", b'0', 1), b"k")
        .finish();
    let tree = same_as_umoci(&registry, "long:1", vec![tar], &[]);
    assert!(tree.contains_key(&format!("/{long}")));
    assert_eq!(tree["/to-long"].link_target.as_deref(), Some(long.as_str()));
    assert_eq!(tree["/pax-file"].uid, 3_000_000);
    assert_eq!(tree["/pax-file"].mtime_nsec, 250_000_000);
    assert_eq!(tree["/pax-file"].xattrs.len(), 1);
    assert_eq!(
        (tree["/kept-name"].mtime_sec, tree["/kept-name"].mtime_nsec),
        (-2, 500_000_000)
    );
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn xattrs_are_kept_or_dropped_as_umoci_does() {
    let registry = Registry::start();
    // A version 2 file capability (cap_net_bind_service, effective).
    let mut cap = vec![0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00];
    cap.extend_from_slice(&[0; 12]);
    let records: Vec<(&str, &[u8])> = vec![
        (
            "SCHILY.xattr.security.selinux",
            b"system_u:object_r:bin_t:s0",
        ),
        ("SCHILY.xattr.system.nfs4_acl", b"acl"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/x"),
        ("SCHILY.xattr.trusted.overlay.origin", b"o"),
        ("SCHILY.xattr.trusted.overlay.metacopy", b"m"),
        ("SCHILY.xattr.trusted.overlay.other", b"kept"),
        ("SCHILY.xattr.user.overlay.opaque", b"y"),
        ("SCHILY.xattr.user.overlay.redirect", b"/x"),
        ("SCHILY.xattr.security.capability", &cap),
        ("SCHILY.xattr.trusted.t", b"t"),
        ("SCHILY.xattr.nonamespace.x", b"dropped"),
        ("SCHILY.xattr.system.other", b"dropped"),
        ("SCHILY.xattr.user.bigger", &[7; 1000]),
    ];
    let tar = RawTar::new()
        .pax(b'x', &records)
        .header(dir(b"d/"))
        .pax(b'x', &records)
        .file(b"d/f", b"x")
        .pax(
            b'x',
            &[
                ("SCHILY.xattr.trusted.on-a-symlink", b"ok"),
                ("SCHILY.xattr.security.overlay.opaque", b"kept"),
            ],
        )
        .header(symlink(b"d/l", b"f"))
        .finish();
    let tree = same_as_umoci(&registry, "xattr:1", vec![tar], &[]);
    let names: Vec<&str> = tree["/d/f"].xattrs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "security.capability",
            "trusted.overlay.other",
            "trusted.t",
            "user.bigger",
            "user.overlay.opaque",
            "user.overlay.redirect"
        ]
    );
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn what_umoci_refuses_clip_refuses_with_a_clear_message() {
    let registry = Registry::start();
    let pax_file = |records: &[(&str, &[u8])], header: RawHeader| {
        RawTar::new()
            .file(b"first", b"1")
            .pax(b'x', records)
            .header(header)
            .finish()
    };
    let corrupt = RawHeader::new(b"bad", b'0', 0).checksum(b"0000001\0");
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "user-xattr-on-symlink",
            pax_file(&[("SCHILY.xattr.user.a", b"1")], symlink(b"l", b"first")),
            &["tar entry \"l\" at offset 2048", "user namespace"],
        ),
        (
            "long-xattr-name",
            pax_file(
                &[(&format!("SCHILY.xattr.user.{}", "n".repeat(251)), b"1")],
                RawHeader::new(b"f", b'0', 0),
            ),
            &["tar entry \"f\"", "256 bytes long", "1 to 255"],
        ),
        (
            "big-xattr-value",
            pax_file(
                &[("SCHILY.xattr.user.v", &[1; 65537])],
                RawHeader::new(b"f", b'0', 0),
            ),
            &["65537-byte value"],
        ),
        (
            "bad-capability",
            pax_file(
                &[("SCHILY.xattr.security.capability", b"zz")],
                RawHeader::new(b"f", b'0', 0),
            ),
            &["security.capability", "version 2"],
        ),
        (
            "empty-xattr-suffix",
            pax_file(
                &[("SCHILY.xattr.user.", b"1")],
                RawHeader::new(b"f", b'0', 0),
            ),
            &["empty name after its namespace"],
        ),
        (
            "contiguous-file",
            RawTar::new()
                .entry(RawHeader::new(b"c", b'7', 1), b"c")
                .finish(),
            &["tar entry \"c\" at offset 0", "'7' (contiguous file)"],
        ),
        (
            "zero-block-then-header",
            RawTar::new()
                .file(b"a", b"a")
                .raw(&[0; 512])
                .file(b"b", b"b")
                .finish(),
            &[
                "tar header at offset 1536",
                "zero block is followed by a non-zero block",
            ],
        ),
        (
            "bad-checksum-deep",
            RawTar::new()
                .file(b"a", b"a")
                .file(b"b", b"b")
                .header(corrupt)
                .finish(),
            &["tar header at offset 2048: header checksum mismatch (stored \"0000001\\x00\""],
        ),
        (
            "truncated-data",
            RawTar::new()
                .file(b"a", b"a")
                .header(RawHeader::new(b"cut", b'0', 5000))
                .raw(&[b'x'; 1000])
                .into_bytes(),
            &[
                "tar entry \"cut\" at offset 1024",
                "ends inside the entry's data (4000 more",
            ],
        ),
        (
            "root-as-file",
            RawTar::new().file(b"./", b"").finish(),
            &["tar entry \"./\"", "root must be a directory"],
        ),
    ];
    for (tag, tar, wanted) in cases {
        let line = both_refuse(&registry, &format!("refused:{tag}"), vec![tar]);
        for want in wanted {
            assert!(line.contains(want), "{tag}: {want:?} not in: {line}");
        }
    }

    // A bare `.wh.` whites out the directory holding it: an unpack fails when that directory
    // comes from a lower layer, and only prunes it when this layer made it.
    let lower = || {
        RawTar::new()
            .header(dir(b"d/"))
            .file(b"d/old", b"o")
            .finish()
    };
    let upper = RawTar::new()
        .entry(RawHeader::new(b"d/.wh.", b'0', 0), b"")
        .finish();
    let line = both_refuse(&registry, "bare-wh:1", vec![lower(), upper]);
    assert!(line.contains("\"/d\": a whiteout without a name"), "{line}");
    let upper = RawTar::new()
        .header(dir(b"d/"))
        .file(b"d/new", b"n")
        .entry(RawHeader::new(b"d/.wh.", b'0', 0), b"")
        .finish();
    let tree = same_as_umoci(&registry, "bare-wh:2", vec![lower(), upper], &[]);
    assert!(tree.contains_key("/d/new") && !tree.contains_key("/d/old"));
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn huge_extension_headers_are_refused_at_once() {
    let registry = Registry::start();
    // A PAX header that claims 1 GiB, followed by a few bytes; the stream is short.
    let mut tar = RawTar::new().file(b"a", b"a").into_bytes();
    tar.extend_from_slice(&RawHeader::new(b"PaxHeaders.0/x", b'x', 1 << 30).bytes());
    tar.extend_from_slice(b"30 path=aaaaaaaaaaaaaaaaaaaa\n");
    let digests = push(&registry, "huge:pax", vec![tar]);
    let line = clip_refuses(&registry, "huge:pax", &digests);
    assert!(
        line.contains("tar header at offset 1024: a PAX extended header of 1073741824 bytes is larger than the 1 MiB limit"),
        "{line}"
    );
    // A GNU long name of 200 MB: the same, and the name is never printed.
    let mut tar = RawHeader::new(b"././@LongLink", b'L', 200 << 20)
        .gnu()
        .bytes()
        .to_vec();
    tar.extend_from_slice(&[b'n'; 4096]);
    let digests = push(&registry, "huge:gnu", vec![tar]);
    let line = clip_refuses(&registry, "huge:gnu", &digests);
    assert!(
        line.contains("a GNU long name of 209715200 bytes"),
        "{line}"
    );
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn long_and_odd_names_are_cut_and_escaped_in_messages() {
    let registry = Registry::start();
    let mut name = vec![b'n'; (1 << 20) - 1];
    name.push(0);
    let tar = RawTar::new()
        .gnu_long(b'L', &name)
        .entry(RawHeader::new(b"x", b'0', 0).gnu(), b"")
        .finish();
    let digests = push(&registry, "names:long", vec![tar]);
    let line = clip_refuses(&registry, "names:long", &digests);
    assert_eq!(line.matches("… (1048575 bytes)").count(), 1, "{line}");
    assert!(line.contains("the name is 1048575 bytes long"), "{line}");

    let mut component = b"esc\x1b[31m".to_vec();
    component.resize(300, b'c');
    let tar = RawTar::new()
        .gnu_long(b'L', &component)
        .entry(RawHeader::new(b"x", b'0', 0).gnu(), b"")
        .finish();
    let digests = push(&registry, "names:esc", vec![tar]);
    let line = clip_refuses(&registry, "names:esc", &digests);
    assert!(!line.contains('\x1b'), "{line:?}");
    assert!(line.contains("esc\\u{1b}[31m"), "{line}");
    assert!(
        line.contains("300 bytes long; Linux allows at most 255"),
        "{line}"
    );
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn relative_symlinks_resolve_from_the_directory_holding_them() {
    let registry = Registry::start();
    let lower = RawTar::new()
        .header(dir(b"x/"))
        .header(dir(b"x/y/"))
        .header(dir(b"x/z/"))
        .header(symlink(b"a", b"x/y"))
        .header(symlink(b"x/y/b", b"../z"))
        .header(symlink(b"abs", b"/x/y"))
        .header(symlink(b"up", b"../../../../x"))
        .finish();
    let upper = RawTar::new()
        .file(b"a/b/f", b"f")
        .file(b"abs/g", b"g")
        .file(b"up/z/h", b"h")
        .finish();
    let tree = same_as_umoci(&registry, "rel:1", vec![lower, upper], &[]);
    for path in ["/x/z/f", "/x/y/g", "/x/z/h"] {
        assert!(tree.contains_key(path), "{path} missing");
    }
    assert!(!tree.contains_key("/z"));
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn entries_below_dangling_symlinks_land_where_they_point() {
    let registry = Registry::start();
    let lower = RawTar::new()
        .header(symlink(b"a", b"x/y"))
        .header(dir(b"m/"))
        .header(dir(b"m/n/"))
        .header(symlink(b"p", b"m/n"))
        .header(symlink(b"m/n/b", b"../zz"))
        .header(symlink(b"c", b"/abs/q"))
        .finish();
    let upper = RawTar::new()
        .file(b"a/f", b"f")
        .file(b"p/b/g", b"g")
        .file(b"c/h", b"h")
        .finish();
    let unstamped = ["/", "/x", "/x/y", "/m", "/m/zz", "/abs", "/abs/q"];
    let tree = same_as_umoci(&registry, "dangling:1", vec![lower, upper], &unstamped);
    for path in ["/x/y/f", "/m/zz/g", "/abs/q/h"] {
        assert!(tree.contains_key(path), "{path} missing");
    }
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn hardlinks_whiteouts_and_opaque_markers_through_symlinks() {
    let registry = Registry::start();
    let lower = || {
        RawTar::new()
            .header(dir(b"real/"))
            .file(b"real/f", b"content")
            .file(b"real/old", b"old")
            .header(symlink(b"link", b"real"))
            .header(symlink(b"sl", b"real/f"))
            .finish()
    };
    // A hardlink through a symlinked directory; a hardlink to a symlink (not followed); a
    // whiteout whose parent is a symlink.
    let upper = RawTar::new()
        .header(hardlink(b"h", b"link/f"))
        .header(hardlink(b"hs", b"sl"))
        .entry(RawHeader::new(b"link/.wh.old", b'0', 0), b"")
        .finish();
    let tree = same_as_umoci(&registry, "through:1", vec![lower(), upper], &[]);
    assert_eq!(tree["/h"].ino, tree["/real/f"].ino);
    assert_eq!(tree["/hs"].ino, tree["/sl"].ino);
    assert!(!tree.contains_key("/real/old"));

    // An opaque marker below the symlink empties the directory it points to.
    let upper = RawTar::new()
        .entry(RawHeader::new(b"link/.wh..wh..opq", b'0', 0), b"")
        .file(b"link/new", b"n")
        .finish();
    let tree = same_as_umoci(&registry, "through:2", vec![lower(), upper], &[]);
    assert!(!tree.contains_key("/real/f") && tree.contains_key("/real/new"));

    // A directory entry first replaces the symlink: the marker then concerns the new directory
    // and the old target keeps its content.
    let upper = RawTar::new()
        .header(dir(b"link/"))
        .entry(RawHeader::new(b"link/.wh..wh..opq", b'0', 0), b"")
        .file(b"link/new", b"n")
        .finish();
    let tree = same_as_umoci(&registry, "through:3", vec![lower(), upper], &[]);
    assert_eq!(tree["/link"].kind, "dir");
    assert!(tree.contains_key("/real/old") && tree.contains_key("/link/new"));
}

#[test]
#[ignore = "integration: needs docker-registry, skopeo, umoci (scripts/test.sh runs it)"]
fn symlink_chains_follow_umocis_limit() {
    let registry = Registry::start();
    let chain = |n: usize| {
        let mut tar = RawTar::new()
            .header(dir(b"real/"))
            .header(symlink(b"l0", b"real"));
        for i in 1..n {
            tar = tar.header(symlink(
                format!("l{i}").as_bytes(),
                format!("l{}", i - 1).as_bytes(),
            ));
        }
        let upper = RawTar::new()
            .file(format!("l{}/f", n - 1).as_bytes(), b"f")
            .finish();
        vec![tar.finish(), upper]
    };
    let tree = same_as_umoci(&registry, "chain:255", chain(255), &[]);
    assert!(tree.contains_key("/real/f"));
    let line = both_refuse(&registry, "chain:256", chain(256));
    assert!(line.contains("too many levels of symbolic links"), "{line}");
    let loop_ = vec![
        RawTar::new()
            .header(symlink(b"a", b"b"))
            .header(symlink(b"b", b"a"))
            .finish(),
        RawTar::new().file(b"a/f", b"f").finish(),
    ];
    let line = both_refuse(&registry, "loop:1", loop_);
    assert!(
        line.contains("\"/a/f\": too many levels of symbolic links"),
        "{line}"
    );
}
