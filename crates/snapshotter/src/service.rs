//! `containerd.services.snapshots.v1.Snapshots` over gRPC on a unix socket.
//!
//! Each call runs the synchronous [`Snapshotter`] operation on tokio's blocking pool (they
//! touch the disk, and the remote path may ask a registry or start a mount process), and maps
//! its [`Error`] to the status code containerd turns back into its `errdefs`.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::api::snapshots::v1::snapshots_server::{Snapshots, SnapshotsServer};
use containerd_snapshots::api::types::Mount as ApiMount;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::meta::{Kind, Time};
use crate::snapshotter::{Info, Mount, Snapshotter};

/// Infos per `List` message (containerd's own server sends 100).
const LIST_BATCH: usize = 100;

/// The gRPC service over a [`Snapshotter`].
#[derive(Debug, Clone)]
pub struct Service {
    inner: Arc<Snapshotter>,
}

impl Service {
    /// Serves `snapshotter`.
    pub fn new(snapshotter: Arc<Snapshotter>) -> Service {
        Service { inner: snapshotter }
    }

    async fn call<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshotter) -> Result<T, Error> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                match e.code() {
                    // The answers of the protocol, not failures.
                    tonic::Code::NotFound | tonic::Code::AlreadyExists => {
                        tracing::debug!("{e}")
                    }
                    _ => tracing::warn!("{e}"),
                }
                Err(e.into())
            }
            Err(e) => Err(Status::internal(format!("snapshot operation failed: {e}"))),
        }
    }
}

fn labels(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn api_mounts(mounts: Vec<Mount>) -> Vec<ApiMount> {
    mounts
        .into_iter()
        .map(|m| ApiMount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn timestamp(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t.system())
}

fn api_info(info: Info) -> api::Info {
    api::Info {
        name: info.name,
        parent: info.parent,
        kind: match info.kind {
            Kind::View => api::Kind::View,
            Kind::Active => api::Kind::Active,
            Kind::Committed => api::Kind::Committed,
        } as i32,
        created_at: Some(timestamp(info.created)),
        updated_at: Some(timestamp(info.updated)),
        labels: info.labels.into_iter().collect(),
    }
}

type ListStream =
    Pin<Box<dyn futures_core::Stream<Item = Result<api::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        request: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let mounts = self
            .call(move |s| s.prepare(Kind::Active, &r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(api::PrepareSnapshotResponse {
            mounts: api_mounts(mounts),
        }))
    }

    async fn view(
        &self,
        request: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let mounts = self
            .call(move |s| s.prepare(Kind::View, &r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(api::ViewSnapshotResponse {
            mounts: api_mounts(mounts),
        }))
    }

    async fn mounts(
        &self,
        request: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let r = request.into_inner();
        let mounts = self.call(move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(api::MountsResponse {
            mounts: api_mounts(mounts),
        }))
    }

    async fn commit(
        &self,
        request: Request<api::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.call(move |s| s.commit(&r.name, &r.key, labels(r.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<api::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.call(move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = self.call(move |s| s.stat(&r.key)).await?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(api_info(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("an update needs the snapshot's info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self
            .call(move |s| s.update(&info.name, labels(info.labels), &paths))
            .await?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(api_info(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        let infos = self.call(move |s| s.list(&r.filters)).await?;
        let mut batches = Vec::new();
        let mut infos = infos.into_iter().map(api_info).peekable();
        while infos.peek().is_some() {
            batches.push(Ok(api::ListSnapshotsResponse {
                info: infos.by_ref().take(LIST_BATCH).collect(),
            }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        request: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        let r = request.into_inner();
        let usage = self.call(move |s| s.usage(&r.key)).await?;
        Ok(Response::new(api::UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        }))
    }

    async fn cleanup(
        &self,
        _request: Request<api::CleanupRequest>,
    ) -> Result<Response<()>, Status> {
        self.call(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

/// Binds `socket` for the snapshotter: its directory created `0700` if missing, a stale
/// socket (nothing listening) replaced, a live one refused; the socket itself `0600`.
fn bind(socket: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    let serve_err = |reason: String| Error::Serve {
        socket: socket.to_path_buf(),
        reason,
    };
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::io("create", parent, e))?;
        }
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(serve_err("another process serves this socket".into()));
            }
            std::fs::remove_file(socket).map_err(|e| Error::io("remove", socket, e))?;
        }
        Ok(_) => return Err(serve_err("exists and is not a socket".into())),
        Err(_) => {}
    }
    // No moment when others could connect: created under a umask that leaves it ours alone.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = std::os::unix::net::UnixListener::bind(socket);
    rustix::process::umask(old);
    let listener = listener.map_err(|e| Error::io("bind", socket, e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod", socket, e))?;
    Ok(listener)
}

/// Serves `snapshotter` on `socket` until `shutdown` completes, then stops accepting,
/// lets the calls in flight finish and removes the socket. Clip mounts stay up: running
/// containers read through them.
pub async fn serve(
    socket: PathBuf,
    snapshotter: Arc<Snapshotter>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let std_listener = bind(&socket)?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("configure", &socket, e))?;
    let listener = tokio::net::UnixListener::from_std(std_listener)
        .map_err(|e| Error::io("listen on", &socket, e))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tracing::info!(socket = %socket.display(), root = %snapshotter.root().display(), "serving containerd snapshots");
    let result = tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(Service::new(snapshotter)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(&socket);
    result.map_err(|e| Error::Serve {
        socket,
        reason: e.to_string(),
    })
}

/// Serves until SIGTERM or SIGINT: builds the async runtime, [`serve`]s, returns once the
/// socket is gone.
pub fn serve_until_signal(socket: PathBuf, snapshotter: Arc<Snapshotter>) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("clip-snapshotter")
        .build()
        .map_err(|e| Error::io("start the async runtime for", &socket, e))?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| Error::io("catch SIGTERM for", &socket, e))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| Error::io("catch SIGINT for", &socket, e))?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        };
        serve(socket, snapshotter, shutdown).await
    })
}
