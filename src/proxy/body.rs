//! The body of every response tandem sends: a backend's streamed body or tandem's own short text;
//! and the body of every request it sends a backend.
//!
//! In proxy mode both take the session fields out of the trailers they relay, as the heads lose
//! them (`SessionHeaders::strip`): a trailer is a header that comes late, not a way around. A
//! request's trailers never carry a Cookie to a backend, in any mode.
//!
//! It carries the request's [`Completion`], dropped when the body has been sent or abandoned:
//! that is when the access-log line is written (with the bytes really sent) and the backend's
//! open-request count goes down.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::logging::{self, AccessEntry};
use crate::metrics::{self, Metrics};
use crate::pool::{Backend, InFlight};
use crate::server::OpenRequest;
use crate::session::contract::SessionHeaders;

pin_project_lite::pin_project! {
    /// A response body plus what must happen when it is done.
    pub struct ResponseBody {
        #[pin]
        inner: Inner,
        completion: Completion,
        // In proxy mode: the session fields to take out of the backend's trailers.
        session_fields: Option<Arc<SessionHeaders>>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner {
        Upstream { #[pin] body: Incoming },
        Local { #[pin] body: Full<Bytes> },
    }
}

impl ResponseBody {
    /// A backend's body, relayed as it arrives; in proxy mode, `session_fields` are taken out
    /// of its trailers.
    pub fn upstream(
        body: Incoming,
        completion: Completion,
        session_fields: Option<Arc<SessionHeaders>>,
    ) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream { body },
            completion,
            session_fields,
        }
    }

    /// A body tandem writes itself (errors).
    pub fn local(text: &'static str, completion: Completion) -> ResponseBody {
        ResponseBody {
            inner: Inner::Local {
                body: Full::new(Bytes::from_static(text.as_bytes())),
            },
            completion,
            session_fields: None,
        }
    }
}

/// The trailers `polled` holds, if it is a trailers frame.
fn trailers_in<E>(polled: &mut Poll<Option<Result<Frame<Bytes>, E>>>) -> Option<&mut HeaderMap> {
    match polled {
        Poll::Ready(Some(Ok(frame))) => frame.trailers_mut(),
        _ => None,
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let mut polled = match this.inner.project() {
            InnerProj::Upstream { body } => body.poll_frame(cx),
            InnerProj::Local { body } => body.poll_frame(cx).map_err(|never| match never {}),
        };
        if let (Some(session_fields), Some(trailers)) =
            (this.session_fields.as_deref(), trailers_in(&mut polled))
        {
            session_fields.strip(trailers);
        }
        let handed_over = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let data = frame.data_ref().map_or(0, |d| d.len());
                this.completion.bytes_sent += data as u64;
                data > 0
            }
            _ => false,
        };
        this.completion.open_request.body_polled(handed_over);
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream { body } => body.is_end_stream(),
            Inner::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body } => body.size_hint(),
            Inner::Local { body } => body.size_hint(),
        }
    }
}

/// The body of a request sent to a backend: the client's, streamed, or a small one read
/// beforehand so that the request can be sent again.
pub enum RequestBody {
    /// The client's body, relayed as it arrives. Until an attempt asks for its first frame it
    /// waits in `unsent`, shared with the request path: an attempt that never read it (its
    /// connection could not be made) leaves it there for the next attempt.
    Client {
        /// The body while no attempt has started reading it.
        unsent: Arc<Mutex<Option<Incoming>>>,
        /// The body once this attempt has taken it.
        taken: Option<Incoming>,
        /// Counts the bytes relayed (the pool's request-body bytes).
        received: prometheus::IntCounter,
        /// The client's silence allowed between two pieces of the body.
        idle_timeout: Duration,
        /// When the body times out unless more of it comes; set when it is first waited on.
        idle: Option<Pin<Box<tokio::time::Sleep>>>,
        /// Set once the whole body has been handed over.
        finished: Arc<std::sync::atomic::AtomicBool>,
        /// In proxy mode: the session fields to take out of the client's trailers.
        session_fields: Option<Arc<SessionHeaders>>,
    },
    /// A whole body held in memory (empty for a request without one); taken when sent.
    Buffered {
        /// The bytes not sent yet.
        data: Option<Bytes>,
    },
}

impl RequestBody {
    /// For a streamed body, the flag set once all of it has been handed over.
    pub fn finished(&self) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        match self {
            RequestBody::Client { finished, .. } => Some(Arc::clone(finished)),
            RequestBody::Buffered { .. } => None,
        }
    }

    fn with_client_body<T>(&self, read: impl FnOnce(Option<&Incoming>) -> T) -> T {
        match self {
            RequestBody::Client {
                taken: Some(body), ..
            } => read(Some(body)),
            RequestBody::Client { unsent, .. } => {
                read(unsent.lock().unwrap_or_else(|p| p.into_inner()).as_ref())
            }
            RequestBody::Buffered { .. } => read(None),
        }
    }
}

/// Why a client's request body failed while tandem read or relayed it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientBodyError {
    /// The body broke its framing (a bad chunk-size line, bad trailers): the client's fault,
    /// answered 400.
    #[error("the request body is malformed: {0}")]
    Malformed(String),
    /// The client closed or reset its connection (or h2 stream) before the body ended.
    #[error("the client went away before its request body ended: {0}")]
    Gone(String),
}

impl ClientBodyError {
    /// Sorts hyper's error for the client's body: its decoder reports a framing violation as
    /// an `InvalidInput` or `InvalidData` I/O error; anything else (an EOF before the end, a
    /// reset connection or stream) is the client going away.
    pub fn of(error: &hyper::Error) -> ClientBodyError {
        let described = crate::error::chain(error);
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            if inner.downcast_ref::<std::io::Error>().is_some_and(|e| {
                matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                )
            }) {
                return ClientBodyError::Malformed(described);
            }
            source = inner.source();
        }
        ClientBodyError::Gone(described)
    }
}

impl From<ClientBodyError> for crate::error::ProxyError {
    fn from(failure: ClientBodyError) -> crate::error::ProxyError {
        match failure {
            ClientBodyError::Malformed(reason) => crate::error::ProxyError::MalformedBody(reason),
            ClientBodyError::Gone(reason) => crate::error::ProxyError::ClientAborted(reason),
        }
    }
}

/// A request body that stopped coming for longer than `listen.body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped coming for {0:?}")]
pub struct BodyIdle(pub Duration);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // `Incoming` is `Unpin`, so no pin projection is needed.
        match self.get_mut() {
            RequestBody::Client {
                unsent,
                taken,
                received,
                idle_timeout,
                idle,
                finished,
                session_fields,
            } => {
                if taken.is_none() {
                    *taken = unsent.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
                match taken {
                    Some(body) => {
                        let mut polled = Pin::new(body).poll_frame(cx);
                        if let Some(trailers) = trailers_in(&mut polled) {
                            // Cookie is no trailer field (RFC 6265 defines it for the head),
                            // and one here would carry tandem's cookies past their removal.
                            trailers.remove(COOKIE);
                            if let Some(session_fields) = session_fields {
                                session_fields.strip(trailers);
                            }
                        }
                        match &polled {
                            Poll::Ready(Some(Ok(frame))) => {
                                received.inc_by(frame.data_ref().map_or(0, |d| d.len() as u64));
                                *idle = None;
                            }
                            Poll::Pending => {
                                let deadline = idle.get_or_insert_with(|| {
                                    Box::pin(tokio::time::sleep(*idle_timeout))
                                });
                                if deadline.as_mut().poll(cx).is_ready() {
                                    return Poll::Ready(Some(Err(Box::new(BodyIdle(
                                        *idle_timeout,
                                    )))));
                                }
                            }
                            Poll::Ready(None) => {
                                finished.store(true, std::sync::atomic::Ordering::Relaxed)
                            }
                            Poll::Ready(Some(Err(error))) => {
                                let failure = ClientBodyError::of(error);
                                return Poll::Ready(Some(Err(Box::new(failure))));
                            }
                        }
                        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
                    }
                    // Another attempt has it; this one was abandoned.
                    None => Poll::Ready(None),
                }
            }
            RequestBody::Buffered { data } => {
                Poll::Ready(data.take().map(|bytes| Ok(Frame::data(bytes))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Buffered { data } => data.is_none(),
            client => client.with_client_body(|body| body.is_none_or(Body::is_end_stream)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            client => client.with_client_body(|body| {
                body.map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
            }),
        }
    }
}

/// What is known about one request, logged as one access-log line when its response is done.
pub struct Completion {
    /// When tandem had read the request head.
    pub started: Instant,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The request method.
    pub method: Method,
    /// The request path, without the query, session ids redacted.
    pub path: String,
    /// The query as logged (session parameters redacted); left empty while the access log is
    /// off, as are the headers below.
    pub query: String,
    /// The Host header, or the target's authority.
    pub host: Option<HeaderValue>,
    /// The User-Agent header.
    pub user_agent: Option<HeaderValue>,
    /// The Referer header.
    pub referer: Option<HeaderValue>,
    /// The request's id, sent to the backend as X-Request-Id.
    pub request_id: HeaderValue,
    /// The client's HTTP version.
    pub version: Version,
    /// The status logged: the one sent, or 499 while none is chosen (should the request be
    /// dropped unanswered, its client went away).
    pub status: StatusCode,
    /// The pool that served the request, once chosen.
    pub pool: Option<Arc<str>>,
    /// The backend that served the request, once chosen.
    pub backend: Option<Arc<Backend>>,
    /// Backends tried (0 when tandem answered before choosing one).
    pub attempts: u32,
    /// Body bytes sent to the client so far.
    pub bytes_sent: u64,
    /// When the first attempt was about to be sent to a backend.
    pub upstream_started: Option<Instant>,
    /// When a backend's response head was taken for the client.
    pub upstream_answered: Option<Instant>,
    /// Keeps the backend's open-request count up while the body streams.
    pub in_flight: Option<InFlight>,
    /// Keeps the client connection from counting as idle while the body streams.
    pub open_request: OpenRequest,
    /// Where the request is counted when it is done.
    pub metrics: Arc<Metrics>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let backend = self
            .backend
            .as_ref()
            .map_or("-", |b| b.config.address.as_str());
        let pool = self.pool.as_deref().unwrap_or("-");
        if let Some(served) = &self.backend {
            served.live.record_response(self.status, self.bytes_sent)
        }
        let requests = &self.metrics.requests;
        requests
            .total
            .with_label_values(&[
                pool,
                backend,
                metrics::method_class(&self.method),
                metrics::status_class(self.status),
            ])
            .inc();
        requests
            .duration
            .with_label_values(&[pool])
            .observe(self.started.elapsed().as_secs_f64());
        requests
            .sent_bytes
            .with_label_values(&[pool])
            .inc_by(self.bytes_sent);
        if logging::access_log_on() {
            let upstream = self
                .upstream_started
                .zip(self.upstream_answered)
                .map(|(sent, answered)| answered.saturating_duration_since(sent));
            logging::write_access(&AccessEntry {
                client: self.client,
                method: &self.method,
                path: &self.path,
                query: &self.query,
                version: self.version,
                status: self.status,
                bytes: self.bytes_sent,
                host: self.host.as_ref(),
                user_agent: self.user_agent.as_ref(),
                referer: self.referer.as_ref(),
                request_id: &self.request_id,
                pool,
                backend,
                attempts: self.attempts,
                upstream,
                total: self.started.elapsed(),
            });
        }
    }
}
