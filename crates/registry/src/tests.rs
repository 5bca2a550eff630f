//! Protocol tests against the scripted loopback server: auth challenges and token renewal,
//! ranges honoured or ignored, resumed and verified blob streams, retries.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::CredEnv;
use crate::resolve::sha256_digest;
use crate::testserver::{Request, Response, TestServer};
use crate::*;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
            deadline: Duration::from_secs(20),
        },
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn client(opts: ClientOptions) -> Client {
    // No auth files: tests must not depend on the machine's docker config.
    Client::with_cred_env(opts, CredEnv::default()).expect("client")
}

fn creds() -> Credentials {
    Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    }
}

/// `creds()`, given explicitly for the registry `server` is.
fn creds_for(server: &TestServer) -> Option<RegistryCredentials> {
    Some(RegistryCredentials::new(server.host(), creds()))
}

/// A multi-platform image held in memory: path → (content type, body).
struct Image {
    files: HashMap<String, (String, Vec<u8>)>,
    index_digest: String,
    amd64_digest: String,
    layer: Vec<u8>,
    layer_digest: String,
    config_digest: String,
}

fn descriptor(media_type: &str, body: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256_digest(body), "size": body.len()})
}

fn image() -> Image {
    let mut files = HashMap::new();
    let blob = |files: &mut HashMap<_, _>, body: Vec<u8>| {
        let d = sha256_digest(&body);
        files.insert(
            format!("/v2/test/app/blobs/{d}"),
            ("application/octet-stream".to_string(), body),
        );
        d
    };
    let layer: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let layer_digest = blob(&mut files, layer.clone());
    let small = b"second layer".to_vec();
    blob(&mut files, small.clone());
    let mut manifests = Vec::new();
    let mut amd64_digest = String::new();
    let mut config_digest = String::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"diff1"), sha256_digest(b"diff2")]},
        }))
        .expect("json");
        let cd = blob(&mut files, config.clone());
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": [
                descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer),
                descriptor("application/vnd.oci.image.layer.v1.tar", &small),
            ],
        }))
        .expect("json");
        let md = sha256_digest(&manifest);
        files.insert(
            format!("/v2/test/app/manifests/{md}"),
            (OCI_MANIFEST.to_string(), manifest.clone()),
        );
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        let mut d = descriptor(OCI_MANIFEST, &manifest);
        d["platform"] = platform;
        manifests.push(d);
        if arch == "amd64" {
            amd64_digest = md;
            config_digest = cd;
        }
    }
    let mut attestation = descriptor(OCI_MANIFEST, b"{}");
    attestation["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
    manifests.push(attestation);
    let index = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
    .expect("json");
    let index_digest = sha256_digest(&index);
    files.insert(
        "/v2/test/app/manifests/latest".into(),
        (OCI_INDEX.to_string(), index.clone()),
    );
    files.insert(
        format!("/v2/test/app/manifests/{index_digest}"),
        (OCI_INDEX.to_string(), index),
    );
    Image {
        files,
        index_digest,
        amd64_digest,
        layer,
        layer_digest,
        config_digest,
    }
}

/// Serves `files` like a registry (Range honoured when `ranges`).
fn serve_file(files: &HashMap<String, (String, Vec<u8>)>, req: &Request, ranges: bool) -> Response {
    let Some((content_type, body)) = files.get(&req.path) else {
        let code = if req.path.contains("/manifests/") {
            "MANIFEST_UNKNOWN"
        } else {
            "BLOB_UNKNOWN"
        };
        return Response::new(404).body(format!(
            r#"{{"errors":[{{"code":"{code}","message":"unknown"}}]}}"#
        ));
    };
    if let (true, Some(range)) = (ranges, req.header("range")) {
        let spec = range.strip_prefix("bytes=").expect("bytes=");
        let (a, b) = spec.split_once('-').expect("-");
        let a: usize = a.parse().expect("start");
        let b: usize = if b.is_empty() {
            body.len() - 1
        } else {
            b.parse().expect("end")
        };
        return Response::new(206)
            .header("Content-Type", content_type.clone())
            .header("Content-Range", format!("bytes {a}-{b}/{}", body.len()))
            .body(body[a..=b].to_vec());
    }
    Response::new(200)
        .header("Content-Type", content_type.clone())
        .body(body.clone())
}

fn reference(server: &TestServer, tag: &str) -> Reference {
    format!("{}/test/app:{tag}", server.host())
        .parse()
        .expect("reference")
}

fn amd64() -> Platform {
    "linux/amd64".parse().expect("platform")
}

#[test]
fn resolves_index_and_selects_platform() {
    let img = Arc::new(image());
    let files = img.clone();
    let server = TestServer::start(move |req| serve_file(&files.files, req, true));
    let c = client(options());
    let r = reference(&server, "latest");

    let resolved = c.resolve(&r, &amd64()).expect("resolve");
    assert_eq!(resolved.reference, r);
    assert_eq!(resolved.manifest_digest, img.amd64_digest);
    assert_eq!(resolved.manifest_media_type, OCI_MANIFEST);
    assert_eq!(sha256_digest(&resolved.manifest), img.amd64_digest);
    assert_eq!(resolved.platform.to_string(), "linux/amd64");
    assert_eq!(resolved.config_digest, img.config_digest);
    assert_eq!(resolved.layers.len(), 2);
    assert_eq!(resolved.layers[0].digest, img.layer_digest);
    assert_eq!(resolved.layers[0].compression, Compression::Gzip);
    assert_eq!(resolved.layers[0].size, img.layer.len() as u64);
    assert_eq!(resolved.layers[0].diff_id, sha256_digest(b"diff1"));
    assert_eq!(resolved.layers[1].compression, Compression::None);
    let manifest_request = &server.requests()[0];
    assert!(manifest_request
        .header("accept")
        .is_some_and(|a| a.contains(OCI_INDEX) && a.contains("manifest.list.v2")));
    assert_eq!(
        manifest_request.header("user-agent"),
        Some(concat!("clip/", env!("CARGO_PKG_VERSION")))
    );

    let arm = c
        .resolve(&r, &"linux/arm64".parse().expect("platform"))
        .expect("resolve arm64");
    assert_eq!(arm.platform.to_string(), "linux/arm64/v8");

    let e = c
        .resolve(&r, &"linux/s390x".parse().expect("platform"))
        .unwrap_err();
    match &e {
        RegistryError::NoMatchingPlatform {
            available, wanted, ..
        } => {
            assert_eq!(available, &["linux/amd64", "linux/arm64/v8"]);
            assert_eq!(wanted, "linux/s390x");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("linux/amd64, linux/arm64/v8"), "{e}");

    // Pinned by digest, with and without a tag.
    let pinned = r.with_digest(&img.index_digest);
    assert_eq!(
        c.resolve(&pinned, &amd64())
            .expect("pinned")
            .manifest_digest,
        img.amd64_digest
    );
    let by_manifest = r.with_digest(&img.amd64_digest);
    let single = c.resolve(&by_manifest, &amd64()).expect("single manifest");
    assert_eq!(single.manifest_digest, img.amd64_digest);
    assert_eq!(single.platform.to_string(), "linux/amd64");
}

#[test]
fn digest_and_shape_errors() {
    let img = Arc::new(image());
    let files = img.clone();
    let wrong = format!("sha256:{}", "b".repeat(64));
    let wrong_path = format!("/v2/test/app/manifests/{wrong}");
    let server = TestServer::start(move |req| {
        if req.path == wrong_path {
            // Whatever is served for a pinned digest must hash to it.
            return serve_file(
                &files.files,
                &Request {
                    method: "GET".into(),
                    body: Vec::new(),
                    path: "/v2/test/app/manifests/latest".into(),
                    headers: vec![],
                },
                true,
            );
        }
        match req.path.as_str() {
            "/v2/test/app/manifests/schema1" => Response::new(200)
                .header("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
                .body(r#"{"schemaVersion":1,"fsLayers":[]}"#),
            "/v2/test/app/manifests/huge" => Response::new(200).header("Content-Length", "9000000").body("{}"),
            "/v2/test/app/manifests/norepo" => {
                Response::new(404).body(r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#)
            }
            _ => serve_file(&files.files, req, true),
        }
    });
    let c = client(options());

    let e = c
        .resolve(&reference(&server, "latest").with_digest(&wrong), &amd64())
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::DigestMismatch { ref expected, .. } if *expected == wrong),
        "{e:?}"
    );
    let e = c
        .resolve(&reference(&server, "schema1"), &amd64())
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::UnsupportedMediaType { .. })
            && e.to_string().contains("re-push"),
        "{e}"
    );
    let e = c
        .resolve(&reference(&server, "huge"), &amd64())
        .unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e:?}");
    let before = server.requests().len();
    let e = c
        .resolve(&reference(&server, "nope"), &amd64())
        .unwrap_err();
    assert!(matches!(e, RegistryError::ManifestNotFound { .. }), "{e:?}");
    assert_eq!(server.requests().len(), before + 1, "a 404 is not retried");
    let e = c
        .resolve(&reference(&server, "norepo"), &amd64())
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::RepositoryNotFound { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("check the name"), "{e}");
}

#[test]
fn layer_and_config_checks() {
    // One manifest whose config has too few diff_ids, one with an encrypted layer.
    let config =
        br#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = b"x".to_vec();
    let m_ids = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .expect("json");
    let config2 = format!(
        r#"{{"os":"linux","architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha256_digest(b"d")
    )
    .into_bytes();
    let m_enc = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config2),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", &layer)],
    }))
    .expect("json");
    let mut files = HashMap::new();
    files.insert(
        "/v2/test/app/manifests/ids".to_string(),
        (OCI_MANIFEST.to_string(), m_ids),
    );
    files.insert(
        "/v2/test/app/manifests/enc".to_string(),
        (OCI_MANIFEST.to_string(), m_enc),
    );
    for b in [config, config2, layer] {
        files.insert(
            format!("/v2/test/app/blobs/{}", sha256_digest(&b)),
            ("application/octet-stream".into(), b),
        );
    }
    let server = TestServer::start(move |req| serve_file(&files, req, true));
    let c = client(options());
    let e = c.resolve(&reference(&server, "ids"), &amd64()).unwrap_err();
    assert!(
        matches!(e, RegistryError::Protocol { ref detail, .. } if detail.contains("diff_ids")),
        "{e:?}"
    );
    let e = c.resolve(&reference(&server, "enc"), &amd64()).unwrap_err();
    assert!(
        matches!(e, RegistryError::UnsupportedMediaType { .. })
            && e.to_string().contains("encrypted"),
        "{e}"
    );
}

/// A registry behind bearer auth whose token service issues `tokN` and accepts only the
/// newest token; `/token` requests are logged.
struct BearerRegistry {
    server: TestServer,
    valid: Arc<Mutex<String>>,
    issued: Arc<AtomicUsize>,
}

fn bearer_registry(img: Arc<Image>) -> BearerRegistry {
    let valid = Arc::new(Mutex::new(String::new()));
    let issued = Arc::new(AtomicUsize::new(0));
    let port = Arc::new(Mutex::new(0u16));
    let (v, n, p) = (valid.clone(), issued.clone(), port.clone());
    let server = TestServer::start(move |req| {
        if req.path.starts_with("/token?") {
            assert!(req.path.contains("service=test-registry"), "{}", req.path);
            assert!(
                req.path.contains("scope=repository%3Atest%2Fapp%3Apull"),
                "{}",
                req.path
            );
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("tok{i}");
            *v.lock().expect("lock") = token.clone();
            return Response::new(200)
                .body(format!(r#"{{"access_token":"{token}","expires_in":300}}"#));
        }
        let want = format!("Bearer {}", v.lock().expect("lock"));
        if req.header("authorization") != Some(want.as_str()) {
            let realm = format!("http://127.0.0.1:{}/token", p.lock().expect("lock"));
            return Response::new(401)
                .header(
                    "WWW-Authenticate",
                    format!(r#"Bearer realm="{realm}",service="test-registry",scope="repository:test/app:pull""#),
                )
                .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#);
        }
        serve_file(&img.files, req, true)
    });
    *port.lock().expect("lock") = server.port();
    BearerRegistry {
        server,
        valid,
        issued,
    }
}

#[test]
fn bearer_token_and_expired_token_renewal() {
    let img = Arc::new(image());
    let reg = bearer_registry(img.clone());
    let c = client(ClientOptions {
        creds: creds_for(&reg.server),
        ..options()
    });
    let r = reference(&reg.server, "latest");

    c.resolve(&r, &amd64()).expect("resolve");
    assert_eq!(
        reg.issued.load(Ordering::SeqCst),
        1,
        "one token for all requests"
    );
    let token_requests: Vec<_> = reg
        .server
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/token"))
        .collect();
    assert_eq!(
        token_requests[0].header("authorization"),
        Some(creds().basic_header().as_str())
    );
    // Anonymous first, 401, token, then everything with the cached token.
    let requests = reg.server.requests();
    assert_eq!(requests[0].header("authorization"), None);
    // 401, token, index, manifest, config.
    assert_eq!(requests.len(), 5, "{requests:#?}");

    // The server forgets the token (expiry): the next request renews it once.
    *reg.valid.lock().expect("lock") = "expired".into();
    let bytes = c
        .fetch_range(&r, &img.layer_digest, 10..20)
        .expect("range after renewal");
    assert_eq!(bytes, &img.layer[10..20]);
    assert_eq!(reg.issued.load(Ordering::SeqCst), 2);

    // A clone shares the token cache.
    let c2 = c.clone();
    c2.fetch_range(&r, &img.layer_digest, 0..1).expect("clone");
    assert_eq!(reg.issued.load(Ordering::SeqCst), 2);
}

#[test]
fn bearer_refused_is_unauthorized() {
    // The token service issues tokens the registry never accepts.
    let issued = Arc::new(AtomicUsize::new(0));
    let port = Arc::new(Mutex::new(0u16));
    let (n, p) = (issued.clone(), port.clone());
    let server = TestServer::start(move |req| {
        if req.path.starts_with("/token") {
            n.fetch_add(1, Ordering::SeqCst);
            return Response::new(200).body(r#"{"token":"useless"}"#);
        }
        Response::new(401)
            .header(
                "WWW-Authenticate",
                format!(
                    r#"Bearer realm="http://127.0.0.1:{}/token",service="s""#,
                    p.lock().expect("lock")
                ),
            )
            .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#)
    });
    *port.lock().expect("lock") = server.port();
    let c = client(options());
    let e = c
        .resolve(&reference(&server, "latest"), &amd64())
        .unwrap_err();
    match &e {
        RegistryError::Unauthorized { reason, .. } => {
            assert!(
                reason.contains("anonymous") && reason.contains("authentication required"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("--creds"));
    assert_eq!(issued.load(Ordering::SeqCst), 1);
    assert_eq!(server.requests().len(), 3, "401, token, 401: no retry loop");
    assert_eq!(c.stats().retries, 0);
}

#[test]
fn basic_auth() {
    let img = Arc::new(image());
    let files = img.clone();
    let server = TestServer::start(move |req| {
        if req.header("authorization") != Some(creds().basic_header().as_str()) {
            return Response::new(401)
                .header("WWW-Authenticate", r#"Basic realm="Registry Realm""#);
        }
        serve_file(&files.files, req, true)
    });
    let r = reference(&server, "latest");
    let e = client(options()).resolve(&r, &amd64()).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");

    let c = client(ClientOptions {
        creds: creds_for(&server),
        ..options()
    });
    c.resolve(&r, &amd64()).expect("resolve with basic");
    let n = server.requests().len();
    c.fetch_range(&r, &img.layer_digest, 0..4).expect("range");
    assert_eq!(
        server.requests().len(),
        n + 1,
        "basic credentials are sent up front once known"
    );

    let wrong = client(ClientOptions {
        creds: Some(RegistryCredentials::new(
            server.host(),
            Credentials {
                username: "alice".into(),
                password: "nope".into(),
            },
        )),
        ..options()
    });
    let e = wrong.resolve(&r, &amd64()).unwrap_err();
    assert!(
        matches!(e, RegistryError::Unauthorized { ref reason, .. } if reason.contains("alice")),
        "{e:?}"
    );
}

#[test]
fn ranges_honoured_and_ignored() {
    let img = Arc::new(image());
    let files = img.clone();
    let honour = TestServer::start(move |req| serve_file(&files.files, req, true));
    let files = img.clone();
    let ignore = TestServer::start(move |req| serve_file(&files.files, req, false));
    let c = client(options());

    for server in [&honour, &ignore] {
        let r = reference(server, "latest");
        let got = c
            .fetch_range(&r, &img.layer_digest, 1000..1100)
            .expect("range");
        assert_eq!(got, &img.layer[1000..1100]);
        let end = img.layer.len() as u64;
        assert_eq!(
            c.fetch_range(&r, &img.layer_digest, end - 3..end)
                .expect("tail"),
            &img.layer[img.layer.len() - 3..]
        );
        let n = server.requests().len();
        assert!(c
            .fetch_range(&r, &img.layer_digest, 5..5)
            .expect("empty")
            .is_empty());
        assert_eq!(server.requests().len(), n, "an empty range sends nothing");
    }
    let last = honour.requests().into_iter().last().expect("request");
    assert_eq!(
        last.header("range"),
        Some(format!("bytes={}-{}", img.layer.len() - 3, img.layer.len() - 1).as_str())
    );

    let r = reference(&ignore, "latest");
    let e = c
        .fetch_range(&r, &img.layer_digest, 0..(img.layer.len() as u64 + 10))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Protocol { .. }), "{e:?}");
    let e = c.fetch_range(&r, "sha256:nothex", 0..1).unwrap_err();
    assert!(matches!(e, RegistryError::InvalidReference { .. }), "{e:?}");
}

#[test]
fn wrong_content_range_is_an_error() {
    let server = TestServer::start(|_| {
        Response::new(206)
            .header("Content-Range", "bytes 0-9/100")
            .body(vec![0u8; 10])
    });
    let c = client(options());
    let digest = sha256_digest(b"x");
    let e = c
        .fetch_range(&reference(&server, "t"), &digest, 5..15)
        .unwrap_err();
    assert!(matches!(e, RegistryError::Protocol { .. }), "{e:?}");
    assert_eq!(server.requests().len(), 1);
}

/// Serves the image, but the first blob response is cut after `cut` bytes (then `stall`).
fn flaky_blob_server(
    img: Arc<Image>,
    cut: usize,
    stall: Option<Duration>,
    ranges: bool,
) -> TestServer {
    let first = Arc::new(AtomicUsize::new(0));
    TestServer::start(move |req| {
        let resp = serve_file(&img.files, req, ranges);
        if req.path.contains("/blobs/") && first.fetch_add(1, Ordering::SeqCst) == 0 {
            return resp.cut(cut, stall);
        }
        resp
    })
}

#[test]
fn blob_reader_resumes_after_truncation() {
    let img = Arc::new(image());
    let cut = 70_001;
    for ranges in [true, false] {
        let server = flaky_blob_server(img.clone(), cut, None, ranges);
        let c = client(options());
        let r = reference(&server, "latest");
        let mut reader = c
            .blob_reader(&r, &img.layer_digest, img.layer.len() as u64)
            .expect("open");
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("read");
        assert!(out == img.layer, "content differs (ranges={ranges})");
        let requests = server.requests();
        assert_eq!(requests.len(), 2, "{requests:#?}");
        assert_eq!(
            requests[1].header("range"),
            Some(format!("bytes={cut}-").as_str())
        );
        assert_eq!(c.stats().retries, 1);
        assert!(c.stats().bytes >= img.layer.len() as u64);
        // Reading past the end stays at EOF.
        assert_eq!(reader.read(&mut [0u8; 8]).expect("eof"), 0);
    }
}

#[test]
fn blob_reader_resumes_after_stall() {
    let img = Arc::new(image());
    let server = flaky_blob_server(img.clone(), 1234, Some(Duration::from_secs(3)), true);
    let c = client(ClientOptions {
        read_timeout: Duration::from_millis(300),
        ..options()
    });
    let mut reader = c
        .blob_reader(
            &reference(&server, "latest"),
            &img.layer_digest,
            img.layer.len() as u64,
        )
        .expect("open");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read");
    assert!(out == img.layer);
    assert_eq!(server.requests()[1].header("range"), Some("bytes=1234-"));
}

#[test]
fn blob_reader_checks_digest_and_size() {
    let img = Arc::new(image());
    let files = img.clone();
    let server = TestServer::start(move |req| {
        let mut resp = serve_file(&files.files, req, true);
        if let Some(b) = resp.body.get_mut(100) {
            *b ^= 1;
        }
        resp
    });
    let c = client(options());
    let r = reference(&server, "latest");
    let mut reader = c
        .blob_reader(&r, &img.layer_digest, img.layer.len() as u64)
        .expect("open");
    let e = reader.read_to_end(&mut Vec::new()).unwrap_err();
    match RegistryError::from_io(&e) {
        Some(RegistryError::DigestMismatch { what, expected, .. }) => {
            assert_eq!(expected, &img.layer_digest);
            assert!(
                what.contains(&img.layer_digest) && what.contains("test/app"),
                "{what}"
            );
        }
        other => panic!("{other:?} / {e}"),
    }
    assert!(
        reader.read(&mut [0u8; 4]).is_err(),
        "a failed stream stays failed"
    );

    // The descriptor says a different size than the registry serves.
    let e = c.blob_reader(&r, &img.layer_digest, 10).unwrap_err();
    assert!(
        matches!(e, RegistryError::SizeMismatch { expected: 10, .. }),
        "{e:?}"
    );
    let e = c
        .blob_reader(&r, &sha256_digest(b"absent"), 10)
        .unwrap_err();
    assert!(matches!(e, RegistryError::BlobNotFound { .. }), "{e:?}");
}

#[test]
fn retries_503_then_succeeds() {
    let img = Arc::new(image());
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    let server = TestServer::start(move |req| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            return Response::new(503).body("busy");
        }
        serve_file(&img.files, req, true)
    });
    let c = client(options());
    c.resolve(&reference(&server, "latest"), &amd64())
        .expect("resolve");
    let stats = c.stats();
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.requests, server.requests().len() as u64);
}

#[test]
fn honours_retry_after() {
    let img = Arc::new(image());
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    let server = TestServer::start(move |req| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            return Response::new(429)
                .header("Retry-After", "1")
                .body(r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#);
        }
        serve_file(&img.files, req, true)
    });
    let c = client(options());
    let started = Instant::now();
    c.resolve(&reference(&server, "latest"), &amd64())
        .expect("resolve");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was not honoured"
    );
    assert_eq!(c.stats().retries, 1);
}

#[test]
fn gives_up_after_max_attempts() {
    let server = TestServer::start(|_| Response::new(503).body("down"));
    let c = client(options());
    let e = c
        .resolve(&reference(&server, "latest"), &amd64())
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Http { status: 503, .. }),
        "{e:?}"
    );
    assert_eq!(server.requests().len(), 4);
    assert_eq!(c.stats().retries, 3);
}

#[test]
fn unreachable_registry_is_a_transport_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = client(options());
    let r: Reference = format!("127.0.0.1:{port}/x:y").parse().expect("ref");
    let e = c.resolve(&r, &amd64()).unwrap_err();
    assert!(matches!(e, RegistryError::Transport { .. }), "{e:?}");
    assert!(e.to_string().contains("reachable"), "{e}");
    assert_eq!(c.stats().retries, 3);
}

/// Serves `files` for `req` with `from` in its path read as the blob path.
fn serve_moved(files: &HashMap<String, (String, Vec<u8>)>, req: &Request, from: &str) -> Response {
    let path = req.path.replace(from, "/v2/test/app/blobs/");
    serve_file(
        files,
        &Request {
            method: req.method.clone(),
            body: Vec::new(),
            path,
            headers: req.headers.clone(),
        },
        true,
    )
}

/// A registry on 127.0.0.1 that wants `creds()` (HTTP basic) for everything, serving `img`, and
/// answering blob GETs with whatever `redirect(digest)` says instead, when it says something.
fn basic_registry_redirecting(
    img: Arc<Image>,
    redirect: impl Fn(&str) -> Option<Response> + Send + Sync + 'static,
) -> TestServer {
    TestServer::start(move |req| {
        if req.header("authorization") != Some(creds().basic_header().as_str()) {
            return Response::new(401).header("WWW-Authenticate", r#"Basic realm="r""#);
        }
        if let Some(resp) = req
            .path
            .strip_prefix("/v2/test/app/blobs/")
            .and_then(&redirect)
        {
            return resp;
        }
        serve_moved(&img.files, req, "/moved/")
    })
}

/// Object storage on `host`: serves the image's blobs under `/storage/<digest>` to anyone.
fn storage_server_on(host: &str, img: Arc<Image>) -> TestServer {
    TestServer::start_on(host, move |req| serve_moved(&img.files, req, "/storage/"))
}

/// A registry that redirects blob reads to object storage of another origin: the Range goes
/// along, the credentials do not (the registry itself gets them, before and after).
fn cross_origin_redirect(storage_ip: &str) {
    let img = Arc::new(image());
    let storage = storage_server_on(storage_ip, img.clone());
    let storage_host = storage.host();
    let server = basic_registry_redirecting(img.clone(), move |digest| {
        Some(Response::new(307).header(
            "Location",
            format!("http://{storage_host}/storage/{digest}"),
        ))
    });
    let c = client(ClientOptions {
        creds: creds_for(&server),
        ..options()
    });
    let r = reference(&server, "latest");
    let got = c
        .fetch_range(&r, &img.layer_digest, 7..77)
        .expect("range via redirect");
    assert_eq!(got, &img.layer[7..77]);
    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), 1, "{at_storage:#?}");
    assert_eq!(at_storage[0].header("range"), Some("bytes=7-76"));
    assert_eq!(at_storage[0].header("authorization"), None);
    // The registry itself did get the credentials.
    let at_registry = server.requests();
    let last = at_registry.last().expect("request");
    assert!(last.path.contains("/blobs/"), "{last:?}");
    assert_eq!(
        last.header("authorization"),
        Some(creds().basic_header().as_str())
    );

    let mut reader = c
        .blob_reader(&r, &img.layer_digest, img.layer.len() as u64)
        .expect("open");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read");
    assert!(out == img.layer);
    assert!(storage
        .requests()
        .iter()
        .all(|q| q.header("authorization").is_none()));
    // A manifest fetched through the same client still carries them (nothing was forgotten).
    c.resolve(&r, &amd64()).expect("resolve");
}

#[test]
fn redirect_to_another_host_keeps_range_and_drops_authorization() {
    // "Object storage" on another loopback address: a different host.
    cross_origin_redirect("127.0.0.2");
}

#[test]
fn redirect_to_another_port_drops_authorization() {
    // Same host, another port: another origin.
    cross_origin_redirect("127.0.0.1");
}

#[test]
fn same_origin_relative_redirect_keeps_authorization_and_range() {
    let img = Arc::new(image());
    let server = basic_registry_redirecting(img.clone(), |digest| {
        // Relative to /v2/test/app/blobs/<digest>: /moved/<digest>, same origin.
        (!digest.starts_with("done"))
            .then(|| Response::new(302).header("Location", format!("../../../../moved/{digest}")))
    });
    let c = client(ClientOptions {
        creds: creds_for(&server),
        ..options()
    });
    let r = reference(&server, "latest");
    let got = c
        .fetch_range(&r, &img.layer_digest, 100..200)
        .expect("range via a relative redirect");
    assert_eq!(got, &img.layer[100..200]);
    let moved: Vec<Request> = server
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/moved/"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:#?}");
    assert_eq!(moved[0].path, format!("/moved/{}", img.layer_digest));
    assert_eq!(moved[0].header("range"), Some("bytes=100-199"));
    assert_eq!(
        moved[0].header("authorization"),
        Some(creds().basic_header().as_str())
    );
}

#[test]
fn too_many_redirects_is_a_clear_error() {
    let hops = Arc::new(AtomicUsize::new(0));
    let n = hops.clone();
    let server = TestServer::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        Response::new(302).header("Location", format!("/loop/{i}"))
    });
    let c = client(options());
    let digest = sha256_digest(b"x");
    let e = c
        .fetch_range(&reference(&server, "t"), &digest, 0..10)
        .unwrap_err();
    match &e {
        RegistryError::Redirect { url, location, .. } => {
            assert!(url.ends_with("/loop/9"), "{url}");
            assert_eq!(location, "/loop/10");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("more than 10 redirects"), "{e}");
    assert!(!e.is_transient());
    assert_eq!(
        server.requests().len(),
        11,
        "the first request and 10 redirects"
    );
    assert_eq!(c.stats().retries, 0);
    assert_eq!(c.stats().requests, 1, "redirects followed count once");
}

#[test]
fn redirects_to_other_schemes_or_nowhere_are_refused() {
    let server = TestServer::start(|req| match req.path.as_str() {
        p if p.ends_with("/ftp") => Response::new(307).header("Location", "ftp://127.0.0.1/blob"),
        p if p.ends_with("/file") => Response::new(301).header("Location", "file:///etc/passwd"),
        _ => Response::new(302),
    });
    let c = client(options());
    for (tag, want) in [("ftp", "\"ftp\""), ("file", "\"file\"")] {
        let e = c.resolve(&reference(&server, tag), &amd64()).unwrap_err();
        assert!(
            matches!(e, RegistryError::Redirect { .. }) && e.to_string().contains(want),
            "{e}"
        );
        assert!(e.to_string().contains("only http and https"), "{e}");
    }
    let e = c
        .resolve(&reference(&server, "nowhere"), &amd64())
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Protocol { ref detail, .. } if detail.contains("Location")),
        "{e}"
    );
    assert_eq!(server.requests().len(), 3, "no retries");
}

#[test]
fn challenge_from_a_redirect_target_is_not_answered() {
    // The registry redirects blobs to another origin, which asks for a bearer token from a
    // token service of its choosing: the registry's credentials must not go there.
    let img = Arc::new(image());
    let port = Arc::new(Mutex::new(0u16));
    let p = port.clone();
    let elsewhere = TestServer::start(move |req| {
        if req.path.starts_with("/token") {
            return Response::new(200).body(r#"{"token":"t"}"#);
        }
        Response::new(401).header(
            "WWW-Authenticate",
            format!(
                r#"Bearer realm="http://127.0.0.1:{}/token",service="s""#,
                p.lock().expect("lock")
            ),
        )
    });
    *port.lock().expect("lock") = elsewhere.port();
    let elsewhere_host = elsewhere.host();
    let server = basic_registry_redirecting(img.clone(), move |digest| {
        Some(Response::new(307).header("Location", format!("http://{elsewhere_host}/b/{digest}")))
    });
    let c = client(ClientOptions {
        creds: creds_for(&server),
        ..options()
    });
    let e = c
        .fetch_range(&reference(&server, "latest"), &img.layer_digest, 0..10)
        .unwrap_err();
    match &e {
        RegistryError::Http {
            status: 401,
            url,
            message,
        } => {
            assert!(url.contains(&elsewhere.host()), "{url}");
            assert!(
                message.contains("never sent to another origin"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let seen = elsewhere.requests();
    assert!(
        seen.iter().all(|q| !q.path.starts_with("/token")),
        "{seen:#?}"
    );
    assert!(seen.iter().all(|q| q.header("authorization").is_none()));
}

#[test]
fn explicit_credentials_are_only_for_their_registry() {
    let bob = Credentials {
        username: "bob".into(),
        password: "b0b".into(),
    };
    let img = Arc::new(image());
    let registry_a = basic_registry_redirecting(img.clone(), |_| None);
    let want = bob.basic_header();
    let files = img.clone();
    let registry_b = TestServer::start(move |req| {
        if req.header("authorization") != Some(want.as_str()) {
            return Response::new(401).header("WWW-Authenticate", r#"Basic realm="b""#);
        }
        serve_file(&files.files, req, true)
    });
    let opts = ClientOptions {
        creds: creds_for(&registry_a),
        ..options()
    };

    // No auth files: B gets no credentials at all, and says so.
    let c = client(opts.clone());
    c.resolve(&reference(&registry_a, "latest"), &amd64())
        .expect("A with its credentials");
    let e = c
        .resolve(&reference(&registry_b, "latest"), &amd64())
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Unauthorized { ref reason, .. } if reason.contains("anonymous")),
        "{e:?}"
    );
    assert!(
        registry_b
            .requests()
            .iter()
            .all(|q| q.header("authorization").is_none()),
        "A's credentials reached B"
    );

    // With an auth file that knows B, B gets what it says.
    let dir = tempfile::tempdir().expect("tempdir");
    let auth_file = dir.path().join("auth.json");
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("bob:b0b")
    };
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{encoded}"}}}}}}"#,
            registry_b.host()
        ),
    )
    .expect("write auth file");
    let env = CredEnv {
        registry_auth_file: Some(auth_file),
        ..CredEnv::default()
    };
    let c = Client::with_cred_env(opts, env).expect("client");
    c.resolve(&reference(&registry_b, "latest"), &amd64())
        .expect("B with the auth file's credentials");
    c.resolve(&reference(&registry_a, "latest"), &amd64())
        .expect("A still with its own");
    let alice = creds().basic_header();
    assert!(registry_b
        .requests()
        .iter()
        .all(|q| q.header("authorization") != Some(alice.as_str())));
}

#[test]
fn fuzzing_entry_points_resolve_like_the_client() {
    let img = image();
    let (_, index) = &img.files["/v2/test/app/manifests/latest"];
    let (_, manifest) = &img.files[&format!("/v2/test/app/manifests/{}", img.amd64_digest)];
    let (_, config) = &img.files[&format!("/v2/test/app/blobs/{}", img.config_digest)];
    let resolved = fuzzing::resolve_bytes(index, Some(OCI_INDEX), manifest, None, config, &amd64())
        .expect("resolve");
    assert_eq!(resolved.media_type, OCI_MANIFEST);
    assert_eq!(resolved.platform.to_string(), "linux/amd64");
    assert_eq!(resolved.layers.len(), 2);
    assert_eq!(resolved.layers[0].digest, img.layer_digest);
    assert_eq!(resolved.layers[0].compression, Compression::Gzip);
    // A single manifest: the config's platform.
    let single = fuzzing::resolve_bytes(manifest, None, b"", None, config, &amd64())
        .expect("single manifest");
    assert_eq!(single.platform.to_string(), "linux/amd64");
    let e = fuzzing::resolve_bytes(index, None, index, None, config, &amd64()).unwrap_err();
    assert!(e.to_string().contains("inside an image index"), "{e}");
}

// ---- writes and referrers ----------------------------------------------------------------

const SUBJECT: &str = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
const CLIP_TYPE: &str = "application/vnd.clip.index.v1";

fn referrer(digest_seed: &[u8], artifact_type: &str) -> Descriptor {
    Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: sha256_digest(digest_seed),
        size: 123,
        artifact_type: Some(artifact_type.into()),
        annotations: Default::default(),
    }
}

#[test]
fn a_registry_with_the_referrers_api_is_asked_through_it() {
    let listed = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [referrer(b"ours", CLIP_TYPE), referrer(b"sig", "application/vnd.dev.cosign.artifact.sig.v1+json")],
    });
    let body = serde_json::to_vec(&listed).expect("json");
    let server = TestServer::start(move |req| {
        if req
            .path
            .starts_with(&format!("/v2/test/app/referrers/{SUBJECT}"))
        {
            // This registry ignores the filter: the client filters.
            Response::new(200)
                .header("Content-Type", OCI_INDEX)
                .body(body.clone())
        } else {
            Response::new(404)
        }
    });
    let c = client(ClientOptions::default());
    let r: Reference = format!("{}/test/app:1", server.host())
        .parse()
        .expect("ref");
    let found = c
        .referrers(&r, SUBJECT, Some(CLIP_TYPE))
        .expect("referrers");
    assert_eq!(found.source, ReferrersSource::Api);
    assert_eq!(found.manifests, vec![referrer(b"ours", CLIP_TYPE)]);
    // One request to the API, with the filter, and one for the tag at the same time (its
    // answer not used: the API answered).
    let mut paths: Vec<String> = server
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            format!("GET /v2/test/app/manifests/{}", referrers_tag(SUBJECT)),
            format!(
                "GET /v2/test/app/referrers/{SUBJECT}?artifactType=application%2Fvnd.clip.index.v1"
            ),
        ]
    );
}

#[test]
fn without_the_api_the_referrers_tag_is_read() {
    let tag = format!("/v2/test/app/manifests/{}", referrers_tag(SUBJECT));
    let listed = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [referrer(b"ours", CLIP_TYPE), referrer(b"sig", "other")],
    }))
    .expect("json");
    let server = TestServer::start(move |req| {
        if req.path == tag {
            Response::new(200)
                .header("Content-Type", OCI_INDEX)
                .body(listed.clone())
        } else {
            Response::new(404).body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}"#)
        }
    });
    let c = client(ClientOptions::default());
    let r: Reference = format!("{}/test/app:1", server.host())
        .parse()
        .expect("ref");
    let found = c
        .referrers(&r, SUBJECT, Some(CLIP_TYPE))
        .expect("referrers");
    assert_eq!(found.source, ReferrersSource::TagSchema);
    assert_eq!(found.manifests, vec![referrer(b"ours", CLIP_TYPE)]);
    // The API and the tag, asked at once (in either order).
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths.iter().any(|p| p.contains("/referrers/")), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.ends_with(&referrers_tag(SUBJECT))),
        "{paths:?}"
    );
}

/// A registry that stores what is pushed (blobs and manifests by path), answering uploads
/// the way CNCF Distribution does; `oci_subject` makes manifest pushes answer `OCI-Subject`.
type Stored = Arc<Mutex<HashMap<String, Vec<u8>>>>;

fn storing_server(oci_subject: bool) -> (TestServer, Stored) {
    let store: Stored = Arc::default();
    let kept = store.clone();
    let server = TestServer::start(move |req| {
        let mut store = kept.lock().expect("store");
        let path = req.path.split('?').next().unwrap_or("").to_string();
        match req.method.as_str() {
            "HEAD" | "GET" => match store.get(&path) {
                Some(body) => Response::new(200)
                    .header("Content-Type", OCI_INDEX)
                    .header("ETag", format!("\"{}\"", sha256_digest(body)))
                    .body(if req.method == "HEAD" {
                        Vec::new()
                    } else {
                        body.clone()
                    }),
                None => Response::new(404)
                    .body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#),
            },
            "POST" => {
                Response::new(202).header("Location", "/v2/test/app/blobs/uploads/u1?_state=x")
            }
            "PUT" if path.starts_with("/v2/test/app/blobs/uploads/") => {
                let digest = req
                    .path
                    .split("digest=")
                    .nth(1)
                    .unwrap_or("")
                    .replace("%3A", ":");
                store.insert(format!("/v2/test/app/blobs/{digest}"), req.body.clone());
                Response::new(201)
            }
            "PUT" => {
                store.insert(path, req.body.clone());
                let mut resp = Response::new(201);
                if oci_subject {
                    resp = resp.header("OCI-Subject", SUBJECT);
                }
                resp
            }
            _ => Response::new(405),
        }
    });
    (server, store)
}

#[test]
fn uploads_and_the_referrers_tag_keep_everyone_elses_entries() {
    let (server, store) = storing_server(false);
    let c = client(ClientOptions::default());
    let r: Reference = format!("{}/test/app:1", server.host())
        .parse()
        .expect("ref");

    // A blob: uploaded once, then found and not uploaded again.
    let digest = c.push_blob(&r, b"index bytes").expect("push");
    assert_eq!(digest, sha256_digest(b"index bytes"));
    let before = server.requests().len();
    c.push_blob(&r, b"index bytes").expect("push again");
    let again: Vec<String> = server.requests()[before..]
        .iter()
        .map(|q| q.method.clone())
        .collect();
    assert_eq!(again, ["HEAD"]);

    // Someone else's signature is in the tag already.
    let sig = referrer(b"sig", "application/vnd.dev.cosign.artifact.sig.v1+json");
    c.add_referrer(&r, SUBJECT, &sig, &|_| false).expect("sig");
    // Ours, then a newer version of ours: the older one is replaced, the signature kept.
    let old = referrer(b"old", CLIP_TYPE);
    let new = referrer(b"new", CLIP_TYPE);
    let is_ours = |d: &Descriptor| d.artifact_type.as_deref() == Some(CLIP_TYPE);
    c.add_referrer(&r, SUBJECT, &old, &is_ours).expect("old");
    c.add_referrer(&r, SUBJECT, &new, &is_ours).expect("new");
    let tag = store.lock().expect("store")
        [&format!("/v2/test/app/manifests/{}", referrers_tag(SUBJECT))]
        .clone();
    let index: serde_json::Value = serde_json::from_slice(&tag).expect("json");
    let digests: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|d| d["digest"].as_str().expect("digest"))
        .collect();
    assert_eq!(digests, [sig.digest.as_str(), new.digest.as_str()]);
    assert_eq!(index["mediaType"], OCI_INDEX);
    // The write was conditional on what was read.
    let conditional = server
        .requests()
        .into_iter()
        .filter(|q| q.method == "PUT" && q.path.contains("/manifests/sha256-"))
        .filter(|q| q.header("If-Match").is_some())
        .count();
    assert!(
        conditional >= 2,
        "updates of an existing tag carry If-Match"
    );
}

#[test]
fn a_registry_that_indexes_subjects_says_so_on_push() {
    let (server, _) = storing_server(true);
    let c = client(ClientOptions::default());
    let r: Reference = format!("{}/test/app:1", server.host())
        .parse()
        .expect("ref");
    let body = br#"{"schemaVersion":2}"#;
    let digest = sha256_digest(body);
    let pushed = c
        .push_manifest(&r, &digest, OCI_MANIFEST, body, None)
        .expect("push");
    assert!(pushed.subject_indexed);
    assert_eq!(pushed.digest, digest);
    // A manifest pushed under a digest it does not have is refused before any request.
    let n = server.requests().len();
    assert!(matches!(
        c.push_manifest(&r, SUBJECT, OCI_MANIFEST, body, None),
        Err(RegistryError::DigestMismatch { .. })
    ));
    assert_eq!(server.requests().len(), n);
}
