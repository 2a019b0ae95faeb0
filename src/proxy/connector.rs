//! The connector of the upstream client: hyper-util's `HttpConnector`, with each connection
//! stamped with the moment it was opened.
//!
//! hyper-util does not say whether a failed request went out on a fresh connection or on one
//! taken from the keep-alive pool. The stamp, read back from the error's connection info, tells:
//! a connection opened before the attempt began was a pooled one. A pooled connection that
//! closes before any response is a backend that went away (restarted, or closed an idle
//! connection) since it was pooled, and the request is sent again on a fresh connection
//! (`ProxyError::StaleConnection`), whatever its method: Apache's mod_proxy answers 502 there.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use prometheus::{IntGauge, IntGaugeVec};
use std::sync::Arc;
use tokio::net::TcpStream;
use tower_service::Service;

/// When a connection was opened, as its `Connected` extra.
#[derive(Debug, Clone, Copy)]
pub struct OpenedAt(pub Instant);

/// `HttpConnector`, stamping each connection with [`OpenedAt`] and counting the open ones in
/// `tandem_backend_connections{pool, backend}`.
#[derive(Clone)]
pub struct StampingConnector {
    /// The TCP connector.
    pub inner: HttpConnector,
    /// The pool's name, for the gauge's label.
    pub pool: Arc<str>,
    /// Open connections by pool and backend.
    pub open: IntGaugeVec,
}

impl Service<Uri> for StampingConnector {
    type Response = Stamped;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Stamped, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let backend = uri.authority().map_or("", |a| a.as_str()).to_string();
        let open = self.open.with_label_values(&[&*self.pool, &backend]);
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            open.inc();
            Ok(Stamped {
                io,
                opened: Instant::now(),
                open,
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// A TCP connection to a backend, when it was opened, and its place in the gauge.
    pub struct Stamped {
        #[pin]
        io: TokioIo<TcpStream>,
        opened: Instant,
        open: IntGauge,
    }

    impl PinnedDrop for Stamped {
        fn drop(this: Pin<&mut Self>) {
            this.open.dec();
        }
    }
}

impl Connection for Stamped {
    fn connected(&self) -> Connected {
        self.io.connected().extra(OpenedAt(self.opened))
    }
}

impl Read for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl Write for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}

/// When the connection a failed request used was opened, if the error says.
pub fn opened_at(error: &hyper_util::client::legacy::Error) -> Option<Instant> {
    let connected = error.connect_info()?;
    let mut extensions = http::Extensions::new();
    connected.get_extras(&mut extensions);
    extensions.get::<OpenedAt>().map(|stamp| stamp.0)
}
