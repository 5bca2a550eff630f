//! The blocking distribution client: options, shared connection pool, token cache, auth
//! challenges, redirects, retries. What is fetched lives in `resolve` (manifests, configs) and
//! `blob`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ureq::http::{self, header};
use ureq::ResponseExt as _;

use crate::auth::{self, Challenge, CredEnv, Credentials, RegistryCredentials};
use crate::error::{error_from_response, summarize_body, ureq_to_io, Target};
use crate::redirect::{self, MAX_REDIRECTS};
use crate::reference::api_host;
use crate::retry::{parse_retry_after, Attempts, RetryPolicy};
use crate::{Mirrors, Reference, RegistryError};

/// Manifests and image configs larger than this are refused.
pub(crate) const MAX_MANIFEST: u64 = 8 << 20;
/// Token responses larger than this are refused.
const MAX_TOKEN: u64 = 1 << 20;
/// At most this much of an error body is read.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// How long a mirror that failed is skipped before it is tried again.
const MIRROR_REST: Duration = Duration::from_secs(30);
/// Token lifetime when the token service does not say (the distribution spec's minimum).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed after a year at the latest, whatever the service says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400 * 365);

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Explicit credentials for one registry (`--creds`). They are used for that registry
    /// only (Docker Hub's names count as one) and never sent to any other: for every other
    /// registry, and for all of them when this is `None`, credentials are looked up per
    /// registry in `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `$DOCKER_CONFIG/config.json` and `~/.docker/config.json` (and their credential helpers).
    pub creds: Option<RegistryCredentials>,
    /// Registries spoken to over plain HTTP (`host:port` or `host`); loopback always is.
    pub insecure_registries: Vec<String>,
    pub retry: RetryPolicy,
    /// Mirrors to read from before the registry itself ([`Mirrors::from_system`] reads the
    /// machine's configuration). Writes never go to a mirror.
    pub mirrors: Mirrors,
    /// Time to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest wait for any single read from the network; a stalled body fails and is retried.
    pub read_timeout: Duration,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            creds: None,
            insecure_registries: Vec::new(),
            retry: RetryPolicy::default(),
            mirrors: Mirrors::none(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            user_agent: concat!("clip/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Request counters of a [`Client`] (shared by its clones).
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// HTTP requests sent (token requests and retries included; redirects followed count once).
    pub requests: u64,
    /// Response body bytes received.
    pub bytes: u64,
    /// Retries after transient failures.
    pub retries: u64,
}

/// A blocking OCI distribution client. Cheap to clone; clones share one connection pool, the
/// token cache and the [`Stats`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    agent: ureq::Agent,
    opts: ClientOptions,
    cred_env: CredEnv,
    /// Credentials looked up per registry in the auth files (for registries `opts.creds` is
    /// not for).
    creds: Mutex<HashMap<String, Option<Credentials>>>,
    /// How each registry asked us to authenticate.
    schemes: Mutex<HashMap<String, Scheme>>,
    /// Bearer tokens per (registry, scope).
    tokens: Mutex<HashMap<(String, String), Token>>,
    /// Mirrors that failed recently, and when: skipped for [`MIRROR_REST`].
    mirrors_down: Mutex<HashMap<String, Instant>>,
    stats: Stats,
}

#[derive(Debug, Clone)]
enum Scheme {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
    /// Whose credentials got it (for error messages).
    user: Option<String>,
}

/// What we send in `Authorization`.
enum Auth {
    None,
    Basic {
        header: String,
        user: String,
    },
    Bearer {
        header: String,
        cached: bool,
        user: Option<String>,
    },
}

impl Auth {
    fn header(&self) -> Option<&str> {
        match self {
            Auth::None => None,
            Auth::Basic { header, .. } | Auth::Bearer { header, .. } => Some(header),
        }
    }

    fn user(&self) -> Option<&str> {
        match self {
            Auth::None => None,
            Auth::Basic { user, .. } => Some(user),
            Auth::Bearer { user, .. } => user.as_deref(),
        }
    }
}

/// A failed attempt: the error, and how long the server asked us to wait.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: RegistryError,
    pub(crate) retry_after: Option<Duration>,
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// One registry request.
pub(crate) struct Req<'a> {
    pub(crate) reference: &'a Reference,
    pub(crate) url: String,
    pub(crate) method: Method<'a>,
    pub(crate) accept: Option<&'static str>,
    pub(crate) range: Option<String>,
    /// `If-Match` (a conditional write).
    pub(crate) if_match: Option<&'a str>,
    pub(crate) target: Target<'a>,
}

impl<'a> Req<'a> {
    /// A GET of `url` for `reference` (pull scope).
    pub(crate) fn get(reference: &'a Reference, url: String, target: Target<'a>) -> Req<'a> {
        Req {
            reference,
            url,
            method: Method::Get,
            accept: None,
            range: None,
            if_match: None,
            target,
        }
    }
}

/// The HTTP method of a [`Req`], with its body. Writes ask for the push scope.
#[derive(Clone, Copy)]
pub(crate) enum Method<'a> {
    Get,
    Head,
    /// An empty POST (starting an upload).
    Post,
    Put {
        body: &'a [u8],
        content_type: &'a str,
    },
}

impl Method<'_> {
    fn name(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put { .. } => "PUT",
        }
    }

    fn writes(&self) -> bool {
        matches!(self, Method::Post | Method::Put { .. })
    }
}

pub(crate) type Response = http::Response<ureq::Body>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with its own connection pool.
    pub fn new(opts: ClientOptions) -> Result<Client, RegistryError> {
        Self::with_cred_env(opts, CredEnv::from_process())
    }

    pub(crate) fn with_cred_env(
        mut opts: ClientOptions,
        cred_env: CredEnv,
    ) -> Result<Client, RegistryError> {
        if !opts
            .user_agent
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_graphic())
        {
            return Err(RegistryError::InvalidOptions {
                detail: format!("user agent {:?} must be printable ASCII", opts.user_agent),
            });
        }
        opts.retry.max_attempts = opts.retry.max_attempts.max(1);
        let insecure_mirrors: Vec<String> = opts
            .mirrors
            .locations()
            .filter(|m| m.insecure)
            .map(|m| m.location.split('/').next().unwrap_or_default().to_string())
            .collect();
        opts.insecure_registries.extend(insecure_mirrors);
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are followed by `send`, which keeps Authorization only within one
            // origin (ureq's same-host rule ignores the port).
            .max_redirects(0)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .timeout_per_write(Some(opts.read_timeout))
            .user_agent(opts.user_agent.as_str())
            // Blobs must arrive byte for byte as stored (ranges are offsets into them).
            .accept_encoding("identity")
            .max_idle_connections(64)
            .max_idle_connections_per_host(16)
            .build();
        Ok(Client {
            inner: Arc::new(Inner {
                agent: ureq::Agent::new_with_config(config),
                opts,
                cred_env,
                creds: Mutex::default(),
                schemes: Mutex::default(),
                tokens: Mutex::default(),
                mirrors_down: Mutex::default(),
                stats: Stats::default(),
            }),
        })
    }

    /// The counters of this client and its clones.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    pub(crate) fn stats_ref(&self) -> &Stats {
        &self.inner.stats
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.opts.retry
    }

    // -----------------------------------------------------------------------------------------
    // Building blocks

    /// `http` for loopback and insecure registries, else `https`.
    fn scheme(&self, registry: &str) -> &'static str {
        let host = host_of(registry);
        if matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
            return "http";
        }
        let insecure = self.inner.opts.insecure_registries.iter().any(|entry| {
            let entry = entry.trim();
            let entry = entry
                .strip_prefix("http://")
                .or_else(|| entry.strip_prefix("https://"))
                .unwrap_or(entry);
            let entry = entry.trim_end_matches('/');
            entry == registry || entry == host || entry == api_host(registry)
        });
        if insecure {
            "http"
        } else {
            "https"
        }
    }

    pub(crate) fn base_url(&self, reference: &Reference) -> String {
        format!(
            "{}://{}/v2/{}",
            self.scheme(&reference.registry),
            reference.api_host(),
            reference.repository
        )
    }

    pub(crate) fn blob_url(&self, reference: &Reference, digest: &str) -> String {
        format!("{}/blobs/{digest}", self.base_url(reference))
    }

    /// Runs a read of `reference` (content addressed by digest when `by_digest`) against its
    /// mirrors first, each once — a mirror that fails is skipped by later reads for a while —
    /// then against the registry itself, under the retry policy. `op` gets the image as the
    /// endpoint names it. What a mirror serves is verified like what the registry serves: by
    /// the callers, against digests.
    pub(crate) fn read_with_mirrors<T>(
        &self,
        reference: &Reference,
        by_digest: bool,
        mut op: impl FnMut(&Reference) -> Result<T, Failure>,
    ) -> Result<T, RegistryError> {
        if let Some(v) = self.try_mirrors(reference, by_digest, &mut op) {
            return Ok(v);
        }
        let url = self.base_url(reference);
        self.with_retry(&url, || op(reference))
    }

    /// Whether a mirror of `reference` is in use right now (configured and not resting after
    /// a failure): a question it answered "not found" need not go to the registry.
    pub(crate) fn mirror_answered_no_api(&self, reference: &Reference) -> bool {
        let down = lock(&self.inner.mirrors_down);
        self.inner
            .opts
            .mirrors
            .endpoints(reference, true)
            .iter()
            .filter(|e| e.mirror)
            .any(|e| {
                down.get(&e.reference.registry)
                    .is_none_or(|since| since.elapsed() >= MIRROR_REST)
            })
    }

    /// Whether reads of `reference` may go to mirrors.
    pub fn has_mirrors(&self, reference: &Reference) -> bool {
        self.inner
            .opts
            .mirrors
            .endpoints(reference, true)
            .iter()
            .any(|e| e.mirror)
    }

    /// Takes the mirrors of `reference` out of use for a while, because bytes read through
    /// this client did not verify (the caller checks content against digests, the client
    /// does not know which endpoint served a range): the next reads go to the registry
    /// itself. Returns whether there were any.
    pub fn distrust_mirrors(&self, reference: &Reference) -> bool {
        let mut any = false;
        let mut down = lock(&self.inner.mirrors_down);
        for endpoint in self.inner.opts.mirrors.endpoints(reference, true) {
            if endpoint.mirror {
                down.insert(endpoint.reference.registry, Instant::now());
                any = true;
            }
        }
        any
    }

    /// Tries `op` once on each mirror of `reference` (skipping those that failed recently, and
    /// marking those that fail now); the first success, if any.
    pub(crate) fn try_mirrors<T>(
        &self,
        reference: &Reference,
        by_digest: bool,
        op: &mut impl FnMut(&Reference) -> Result<T, Failure>,
    ) -> Option<T> {
        if self.inner.opts.mirrors.is_empty() {
            return None;
        }
        for endpoint in self.inner.opts.mirrors.endpoints(reference, by_digest) {
            if !endpoint.mirror {
                break;
            }
            let host = endpoint.reference.registry.clone();
            let resting = lock(&self.inner.mirrors_down)
                .get(&host)
                .is_some_and(|since| since.elapsed() < MIRROR_REST);
            if resting {
                continue;
            }
            match op(&endpoint.reference) {
                Ok(v) => return Some(v),
                // A mirror may lack what its registry has (a pull-through cache fills on
                // demand; a mirror may have no referrers API): not a failure of the mirror.
                Err(Failure {
                    error:
                        RegistryError::ManifestNotFound { .. }
                        | RegistryError::BlobNotFound { .. }
                        | RegistryError::RepositoryNotFound { .. },
                    ..
                }) => {
                    tracing::debug!(mirror = %host, "the mirror does not have it; trying the next");
                }
                Err(f) => {
                    tracing::warn!(mirror = %host, error = %f.error,
                        "mirror failed; trying the next, then the registry itself");
                    lock(&self.inner.mirrors_down).insert(host, Instant::now());
                }
            }
        }
        None
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retry policy gives up.
    pub(crate) fn with_retry<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, RegistryError> {
        let mut attempts = Attempts::new();
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(f) if f.error.is_transient() => {
                    match attempts.failed(&self.inner.opts.retry, f.retry_after) {
                        Some(delay) => {
                            // Not a warning: the caller reports the failure that stays.
                            tracing::debug!(
                                url,
                                attempt = attempts.failures,
                                error = %f.error,
                                delay_ms = delay.as_millis() as u64,
                                "transient registry error, retrying"
                            );
                            self.inner.stats.add_retry();
                            std::thread::sleep(delay);
                        }
                        None => return Err(f.error),
                    }
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    /// Sends one GET, no auth handling, and follows up to [`MAX_REDIRECTS`] redirects itself.
    ///
    /// `Authorization`, if among `headers`, goes only to the origin (scheme, host and port) of
    /// `url`: it follows a redirect within that origin and is dropped for good at the first hop
    /// to another one (blob downloads are redirected to object storage, which must not see
    /// registry credentials). The other headers (`Accept`, `Range`) follow every hop. The
    /// response's `get_uri()` is the URL that answered. Counts as one request in the stats.
    fn send(
        &self,
        url: &str,
        method: Method<'_>,
        headers: &[(&str, &str)],
    ) -> Result<Response, Failure> {
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut current = url.to_string();
        let mut with_auth = true;
        let mut hops = 0;
        loop {
            let pass = |(name, _): &&(&str, &str)| {
                with_auth || !name.eq_ignore_ascii_case("authorization")
            };
            tracing::debug!(url = %current, method = method.name());
            let agent = &self.inner.agent;
            let sent = match method {
                Method::Get => headers
                    .iter()
                    .filter(pass)
                    .fold(agent.get(&current), |r, (n, v)| r.header(*n, *v))
                    .call(),
                Method::Head => headers
                    .iter()
                    .filter(pass)
                    .fold(agent.head(&current), |r, (n, v)| r.header(*n, *v))
                    .call(),
                Method::Post => headers
                    .iter()
                    .filter(pass)
                    .fold(agent.post(&current), |r, (n, v)| r.header(*n, *v))
                    .send_empty(),
                Method::Put { body, content_type } => headers
                    .iter()
                    .filter(pass)
                    .fold(agent.put(&current), |r, (n, v)| r.header(*n, *v))
                    .header("Content-Type", content_type)
                    .send(body),
            };
            let resp = sent.map_err(|e| RegistryError::Transport {
                url: current.clone(),
                source: ureq_to_io(e),
            })?;
            let status = resp.status().as_u16();
            // A write follows only the redirects that keep method and body (307, 308).
            let follow = if method.writes() {
                matches!(status, 307 | 308)
            } else {
                redirect::is_redirect(status)
            };
            if !follow {
                return Ok(resp);
            }
            let Some(location) = header_str(&resp, header::LOCATION) else {
                return Err(RegistryError::Protocol {
                    url: current,
                    detail: format!("redirect (HTTP {status}) without a usable Location header"),
                }
                .into());
            };
            let refuse = |reason: String| RegistryError::Redirect {
                url: current.clone(),
                location: location.clone(),
                reason,
            };
            if hops == MAX_REDIRECTS {
                return Err(refuse(format!(
                    "more than {MAX_REDIRECTS} redirects in a row (a redirect loop?)"
                ))
                .into());
            }
            let hop = redirect::follow(&current, &location).map_err(refuse)?;
            // Read what little a redirect says, so that the connection can be reused.
            self.read_error_body(resp);
            tracing::debug!(status, from = %current, to = %hop.url, same_origin = hop.same_origin,
                "following redirect (Authorization only within one origin)");
            with_auth &= hop.same_origin;
            current = hop.url;
            hops += 1;
        }
    }

    /// One request with authentication: anonymous or with what we know works, answering 401
    /// challenges (bearer tokens, basic) and renewing an expired cached token once. Returns a
    /// 2xx response; any other status becomes an error.
    pub(crate) fn exchange(&self, req: &Req<'_>) -> Result<Response, Failure> {
        let registry = req.reference.registry.as_str();
        let actions = if req.method.writes() {
            "pull,push"
        } else {
            "pull"
        };
        let scope = format!("repository:{}:{actions}", req.reference.repository);
        // Credentials and tokens go to the registry's own origin only (an upload `Location`
        // may name another host).
        let own_origin = redirect::same_origin(&req.url, &self.base_url(req.reference));
        let mut auth = if own_origin {
            self.preauth(registry, &scope)?
        } else {
            Auth::None
        };
        let mut renewed = false;
        loop {
            let mut headers: Vec<(&str, &str)> = Vec::with_capacity(4);
            if let Some(a) = req.accept {
                headers.push(("Accept", a));
            }
            if let Some(r) = &req.range {
                headers.push(("Range", r));
            }
            if let Some(m) = req.if_match {
                headers.push(("If-Match", m));
            }
            if let Some(h) = auth.header() {
                headers.push(("Authorization", h));
            }
            let resp = self.send(&req.url, req.method, &headers)?;
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(resp);
            }
            if status != 401 {
                return Err(self.failure_from_response(&req.target, registry, resp));
            }
            let answered_by = resp.get_uri().to_string();
            if !own_origin || !redirect::same_origin(&req.url, &answered_by) {
                // Redirected elsewhere, and that server wants credentials: its challenge could
                // name any token service, and the registry's credentials are not for it.
                self.read_error_body(resp);
                return Err(RegistryError::Http {
                    url: answered_by,
                    status,
                    message: format!(
                        "a redirect target outside {registry} asked for authentication; \
                         the registry's credentials are never sent to another origin"
                    ),
                }
                .into());
            }
            let challenges = auth::parse_challenges(
                resp.headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let challenge = pick_challenge(&challenges);
            let used = auth.user().map(str::to_string);
            let refused = |client: &Client, resp: Response| -> Failure {
                let url = resp.get_uri().to_string();
                let body = client.read_error_body(resp);
                client
                    .unauthorized(registry, used.as_deref(), &url, &body)
                    .into()
            };
            auth = match (&auth, challenge) {
                (Auth::Bearer { cached: true, .. }, Some(c))
                    if !renewed && c.scheme == "bearer" =>
                {
                    // Our cached token was refused (expired or revoked): get a fresh one, once.
                    renewed = true;
                    let key = (registry.to_string(), scope.clone());
                    let mut tokens = lock(&self.inner.tokens);
                    // Another thread may have renewed it already: drop only the one refused.
                    if tokens
                        .get(&key)
                        .is_some_and(|t| auth.header() == Some(&*format!("Bearer {}", t.value)))
                    {
                        tokens.remove(&key);
                    }
                    drop(tokens);
                    self.answer_bearer(registry, &scope, c, &req.url)?
                }
                (Auth::None, Some(c)) if c.scheme == "bearer" => {
                    self.answer_bearer(registry, &scope, c, &req.url)?
                }
                (Auth::None, Some(c)) if c.scheme == "basic" => match self.creds_for(registry)? {
                    Some(creds) => {
                        lock(&self.inner.schemes).insert(registry.to_string(), Scheme::Basic);
                        Auth::Basic {
                            header: creds.basic_header(),
                            user: creds.username,
                        }
                    }
                    None => return Err(refused(self, resp)),
                },
                _ => return Err(refused(self, resp)),
            };
        }
    }

    /// The auth to send up front: a cached token, a token fetched because we know the
    /// registry wants one, basic credentials, or nothing.
    fn preauth(&self, registry: &str, scope: &str) -> Result<Auth, Failure> {
        let key = (registry.to_string(), scope.to_string());
        if let Some(token) = lock(&self.inner.tokens)
            .get(&key)
            .filter(|t| t.expires > Instant::now())
        {
            return Ok(Auth::Bearer {
                header: format!("Bearer {}", token.value),
                cached: true,
                user: token.user.clone(),
            });
        }
        let scheme = lock(&self.inner.schemes).get(registry).cloned();
        match scheme {
            None => Ok(Auth::None),
            Some(Scheme::Basic) => Ok(match self.creds_for(registry)? {
                Some(c) => Auth::Basic {
                    header: c.basic_header(),
                    user: c.username,
                },
                None => Auth::None,
            }),
            Some(Scheme::Bearer { realm, service }) => {
                self.fetch_token(registry, scope, &realm, service.as_deref())
            }
        }
    }

    fn answer_bearer(
        &self,
        registry: &str,
        scope: &str,
        c: &Challenge,
        url: &str,
    ) -> Result<Auth, Failure> {
        let realm = c.param("realm").unwrap_or_default().to_string();
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(RegistryError::Protocol {
                url: url.to_string(),
                detail: format!("bearer challenge with an invalid realm {realm:?}"),
            }
            .into());
        }
        let service = c.param("service").map(str::to_string);
        lock(&self.inner.schemes).insert(
            registry.to_string(),
            Scheme::Bearer {
                realm: realm.clone(),
                service: service.clone(),
            },
        );
        self.fetch_token(registry, scope, &realm, service.as_deref())
    }

    /// Gets a bearer token from the token service and caches it.
    fn fetch_token(
        &self,
        registry: &str,
        scope: &str,
        realm: &str,
        service: Option<&str>,
    ) -> Result<Auth, Failure> {
        let creds = self.creds_for(registry)?;
        let mut url = realm.to_string();
        url.push(if url.contains('?') { '&' } else { '?' });
        if let Some(s) = service {
            url.push_str(&format!("service={}&", encode_query(s)));
        }
        url.push_str(&format!("scope={}", encode_query(scope)));

        // Never send a password in clear text to a token service that an HTTPS registry named.
        let plain_realm = realm.starts_with("http://");
        let registry_plain = self.scheme(registry) == "http";
        let creds = match creds {
            Some(_) if plain_realm && !registry_plain => {
                tracing::warn!(
                    realm,
                    registry,
                    "token service is plain HTTP; not sending credentials to it"
                );
                None
            }
            c => c,
        };
        let basic = creds.as_ref().map(Credentials::basic_header);
        let mut headers = vec![("Accept", "application/json")];
        if let Some(b) = &basic {
            headers.push(("Authorization", b.as_str()));
        }
        let user = creds.as_ref().map(|c| c.username.clone());
        let resp = self.send(&url, Method::Get, &headers)?;
        let status = resp.status().as_u16();
        if status == 401 {
            let body = self.read_error_body(resp);
            return Err(self
                .unauthorized(registry, user.as_deref(), &url, &body)
                .into());
        }
        if !(200..300).contains(&status) {
            return Err(self.failure_from_response(&Target::Token, registry, resp));
        }
        let body = self.read_capped(
            resp,
            MAX_TOKEN,
            &format!("token response from {realm}"),
            &url,
        )?;

        let token = parse_token_response(&url, &body)?;
        let expires = Instant::now()
            .checked_add(token.valid_for)
            .unwrap_or_else(Instant::now);
        let value = token.value;
        lock(&self.inner.tokens).insert(
            (registry.to_string(), scope.to_string()),
            Token {
                value: value.clone(),
                expires,
                user: user.clone(),
            },
        );
        Ok(Auth::Bearer {
            header: format!("Bearer {value}"),
            cached: false,
            user,
        })
    }

    /// Credentials for `registry`: the explicit ones if they are for it, else those found in
    /// the auth files (looked up once per registry).
    fn creds_for(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
        if let Some(c) = self
            .inner
            .opts
            .creds
            .as_ref()
            .filter(|c| c.is_for(registry))
        {
            return Ok(Some(c.credentials.clone()));
        }
        if let Some(found) = lock(&self.inner.creds).get(registry) {
            return Ok(found.clone());
        }
        let found = auth::credentials_for(&self.inner.cred_env, registry)?;
        lock(&self.inner.creds).insert(registry.to_string(), found.clone());
        Ok(found)
    }

    fn unauthorized(
        &self,
        registry: &str,
        user: Option<&str>,
        url: &str,
        body: &[u8],
    ) -> RegistryError {
        let server = match error_from_response(&Target::Token, registry, url, 401, body) {
            RegistryError::Unauthorized { reason, .. } => reason,
            _ => summarize_body(body),
        };
        let reason = match user {
            Some(u) => format!("access refused for user {u:?} ({server})"),
            None => format!(
                "anonymous access refused ({server}); \
                 the repository may not exist, or it is private"
            ),
        };
        RegistryError::Unauthorized {
            registry: registry.to_string(),
            reason,
        }
    }

    /// Reads at most [`MAX_ERROR_BODY`] of a response body, ignoring read errors.
    fn read_error_body(&self, resp: Response) -> Vec<u8> {
        let mut body = Vec::new();
        let _ = resp
            .into_body()
            .into_reader()
            .take(MAX_ERROR_BODY)
            .read_to_end(&mut body);
        self.inner.stats.add_bytes(body.len() as u64);
        body
    }

    fn failure_from_response(
        &self,
        target: &Target<'_>,
        registry: &str,
        resp: Response,
    ) -> Failure {
        let status = resp.status().as_u16();
        let url = resp.get_uri().to_string();
        let retry_after = header_str(&resp, header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let body = self.read_error_body(resp);
        Failure {
            error: error_from_response(target, registry, &url, status, &body),
            retry_after,
        }
    }

    /// Reads a whole body of at most `limit` bytes.
    pub(crate) fn read_capped(
        &self,
        resp: Response,
        limit: u64,
        what: &str,
        url: &str,
    ) -> Result<Vec<u8>, Failure> {
        let too_large = || RegistryError::TooLarge {
            what: what.to_string(),
            limit,
        };
        if header_str(&resp, header::CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > limit)
        {
            return Err(too_large().into());
        }
        let result = resp
            .into_body()
            .into_with_config()
            .limit(limit)
            .read_to_vec();
        match result {
            Ok(body) => {
                self.inner.stats.add_bytes(body.len() as u64);
                Ok(body)
            }
            Err(ureq::Error::BodyExceedsLimit(_)) => Err(too_large().into()),
            Err(e) => Err(RegistryError::Transport {
                url: url.to_string(),
                source: ureq_to_io(e),
            }
            .into()),
        }
    }
}

/// A bearer token from a token service's answer, and how long to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedToken {
    pub(crate) value: String,
    /// The lifetime the service gave (at least [`DEFAULT_TOKEN_LIFETIME`], at most a year),
    /// less a margin so that it is renewed a little early.
    pub(crate) valid_for: Duration,
}

/// Parses a token response (`token` or `access_token`, `expires_in`) from `url`.
pub(crate) fn parse_token_response(url: &str, body: &[u8]) -> Result<ParsedToken, RegistryError> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let parsed: TokenResponse = parse_json(url, "token response", body)?;
    let value = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| RegistryError::Protocol {
            url: url.to_string(),
            detail: "token response has no token".into(),
        })?;
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RegistryError::Protocol {
            url: url.to_string(),
            detail: "token contains invalid characters".into(),
        });
    }
    let lifetime = parsed
        .expires_in
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
        .clamp(DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME);
    // Renew a little early so a token does not expire between our check and its use.
    let margin = (lifetime / 10).min(Duration::from_secs(30));
    Ok(ParsedToken {
        value,
        valid_for: lifetime - margin,
    })
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    url: &str,
    what: &str,
    body: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::Protocol {
        url: url.to_string(),
        detail: format!("invalid {what}: {e}"),
    })
}

pub(crate) fn header_str(resp: &Response, name: impl header::AsHeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Bearer beats Basic; other schemes are of no use to us.
fn pick_challenge(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges
        .iter()
        .find(|c| c.scheme == "bearer")
        .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
}

/// `host` of `host:port`, `[v6]` of `[v6]:port`.
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        registry
            .split_once(']')
            .map_or(registry, |(h, _)| &registry[..h.len() + 1])
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_schemes() {
        assert_eq!(host_of("localhost:5000"), "localhost");
        assert_eq!(host_of("[::1]:5000"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
        assert_eq!(host_of("ghcr.io"), "ghcr.io");
        let opts = ClientOptions {
            insecure_registries: vec!["myreg:5000".into(), "http://other/".into()],
            ..ClientOptions::default()
        };
        let c = Client::with_cred_env(opts, CredEnv::default()).expect("client");
        let s = |r: &str| c.scheme(&r.parse::<Reference>().expect("ref").registry);
        assert_eq!(s("localhost:5000/a"), "http");
        assert_eq!(s("127.0.0.1:1/a"), "http");
        assert_eq!(s("[::1]:5000/a"), "http");
        assert_eq!(s("myreg:5000/a"), "http");
        assert_eq!(s("myreg:6000/a"), "https");
        assert_eq!(s("other:6000/a"), "http");
        assert_eq!(s("alpine"), "https");
        assert_eq!(
            c.base_url(&"alpine".parse().expect("ref")),
            "https://registry-1.docker.io/v2/library/alpine"
        );
    }

    #[test]
    fn options_are_checked() {
        let opts = ClientOptions {
            user_agent: "bad\nagent".into(),
            ..ClientOptions::default()
        };
        assert!(matches!(
            Client::new(opts),
            Err(RegistryError::InvalidOptions { .. })
        ));
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(encode_query("registry.docker.io"), "registry.docker.io");
    }

    #[test]
    fn token_responses() {
        let parse = |body: &str| parse_token_response("u", body.as_bytes());
        let t = parse(r#"{"token":"abc","expires_in":300}"#).expect("token");
        assert_eq!(t.value, "abc");
        assert_eq!(t.valid_for, Duration::from_secs(270));
        let t = parse(r#"{"token":"","access_token":"xyz"}"#).expect("access_token");
        assert_eq!(t.value, "xyz");
        assert_eq!(
            t.valid_for,
            Duration::from_secs(54),
            "60 s by default, less 10%"
        );
        let t = parse(r#"{"token":"a","expires_in":1}"#).expect("short");
        assert_eq!(
            t.valid_for,
            Duration::from_secs(54),
            "never below the spec's minimum"
        );
        let t = parse(r#"{"token":"a","expires_in":18446744073709551615}"#).expect("long");
        assert_eq!(t.valid_for, MAX_TOKEN_LIFETIME - Duration::from_secs(30));
        for bad in [
            "{}",
            r#"{"token":""}"#,
            r#"{"token":"a b"}"#,
            r#"{"token":"a
b"}"#,
            r#"{"token":"a","expires_in":-1}"#,
            "not json",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, RegistryError::Protocol { .. }), "{bad}: {e:?}");
        }
    }

    #[test]
    fn client_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Client>();
    }
}
