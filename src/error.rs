//! The one place where a failure becomes an HTTP response: each `ProxyError` has its status, a
//! short public body, and a reason for the log. Nothing on the request path returns `Err` to hyper.

use http::StatusCode;

use crate::proxy::validate::Rejection;

/// nginx's non-standard status for a request whose client went away before the answer: for
/// the access log and metrics only, never sent (a client that went away reads nothing).
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a valid status code"),
};

/// Why tandem answered a request itself instead of relaying a backend's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No pool matches the request's host and path (404).
    #[error("no pool serves host `{host}` and this path")]
    NoPool {
        /// The normalized host the request asked for.
        host: String,
    },
    /// Every backend of the pool is draining or stopped (503).
    #[error("no backend of pool `{pool}` takes new requests")]
    NoBackend {
        /// The pool's name.
        pool: String,
    },
    /// Every backend the request may use is at its `max_connections` and the pool's queue is
    /// full (503 at once, as HAProxy past `maxqueue`).
    #[error("the backends of pool `{pool}` are full and so is its queue")]
    QueueFull {
        /// The pool's name.
        pool: String,
    },
    /// The request waited in the pool's queue for `queue_timeout` and no backend it may use
    /// made room (503, as HAProxy past `timeout queue`).
    #[error("waited {waited:?} in the queue of pool `{pool}` and no backend made room")]
    QueueTimeout {
        /// The pool's name.
        pool: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// The session's backend cannot serve it and `sticky.force` forbids moving it (503).
    #[error(
        "the session's backend in pool `{pool}` cannot serve it, and sticky.force keeps it there"
    )]
    SessionBackendUnavailable {
        /// The pool's name.
        pool: String,
    },
    /// The request failed the validation step before routing (400, 414 or 431).
    #[error("invalid request: {0}")]
    Invalid(Rejection),
    /// The client went away while its request body was relayed: logged as nginx's 499, and
    /// should the client still read, answered 400 with the connection closed. Not the
    /// backend's fault.
    #[error("the client's request body broke off: {0}")]
    ClientAborted(String),
    /// The client's request body broke its framing (a bad chunk line) while it was relayed
    /// (400, connection closed); the backend's request is aborted with it.
    #[error("the client's request body is malformed: {0}")]
    MalformedBody(String),
    /// The client did not send its (small, buffered) request body in time (408).
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The request cannot be routed as sent (400).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The backend refused or failed the connection (502).
    #[error("cannot connect to the backend: {0}")]
    Connect(String),
    /// Opening the connection took too long; nothing was sent (504).
    #[error("connecting to the backend timed out: {0}")]
    ConnectTimeout(String),
    /// The response head did not come in time (504).
    #[error("the backend did not answer in time: {0}")]
    Timeout(String),
    /// The backend broke the exchange: reset, closed early, or answered nonsense (502).
    #[error("the backend failed: {0}")]
    Upstream(String),
    /// A keep-alive connection taken from the pool closed before any response: the backend
    /// went away since it was pooled (restart, idle close). Retried on a fresh connection,
    /// whatever the method; 502 only if that fails too.
    #[error("a pooled connection to the backend was closed before any response: {0}")]
    StaleConnection(String),
    /// The backend's session update was refused and not applied (502 unless
    /// `session.on_invalid_update = "pass"`): the backend believes it stored what was not.
    #[error("the backend's session update was refused: {0}")]
    SessionUpdate(crate::session::Rejection),
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoPool { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoBackend { .. }
            | ProxyError::SessionBackendUnavailable { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Invalid(rejection) => match rejection {
                Rejection::TooManyFields { .. } | Rejection::FieldsTooLarge { .. } => {
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                }
                Rejection::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
                Rejection::BadHost(_) | Rejection::BadTarget(_) => StatusCode::BAD_REQUEST,
            },
            ProxyError::BadRequest(_)
            | ProxyError::ClientAborted(_)
            | ProxyError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Connect(_)
            | ProxyError::Upstream(_)
            | ProxyError::StaleConnection(_)
            | ProxyError::SessionUpdate(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout(_) | ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The status the access log and metrics record: the one sent, except 499 for a client
    /// that went away.
    pub fn logged_status(&self) -> StatusCode {
        match self {
            ProxyError::ClientAborted(_) => CLIENT_CLOSED_REQUEST,
            other => other.status(),
        }
    }

    /// The plain-text body the client receives: what happened, without internal details.
    pub fn public_body(&self) -> &'static str {
        match self {
            ProxyError::NoPool { .. } => "404 Not Found: no site is served at this address\n",
            ProxyError::NoBackend { .. } | ProxyError::SessionBackendUnavailable { .. } => {
                "503 Service Unavailable: no server is available\n"
            }
            ProxyError::QueueFull { .. } | ProxyError::QueueTimeout { .. } => {
                "503 Service Unavailable: the servers are busy\n"
            }
            ProxyError::Invalid(rejection) => match rejection {
                Rejection::TooManyFields { .. } | Rejection::FieldsTooLarge { .. } => {
                    "431 Request Header Fields Too Large\n"
                }
                Rejection::UriTooLong { .. } => "414 URI Too Long\n",
                Rejection::BadHost(_) | Rejection::BadTarget(_) => "400 Bad Request\n",
            },
            ProxyError::BadRequest(_)
            | ProxyError::ClientAborted(_)
            | ProxyError::MalformedBody(_) => "400 Bad Request\n",
            ProxyError::BodyTimeout(_) => "408 Request Timeout\n",
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::StaleConnection(_) => {
                "502 Bad Gateway: the server failed\n"
            }
            ProxyError::SessionUpdate(_) => {
                "502 Bad Gateway: the server's session update could not be stored\n"
            }
            ProxyError::ConnectTimeout(_) | ProxyError::Timeout(_) => {
                "504 Gateway Timeout: the server did not answer in time\n"
            }
        }
    }

    /// Whether the backend is to blame, so that passive checks count it against the backend.
    pub fn blames_backend(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(_)
                | ProxyError::ConnectTimeout(_)
                | ProxyError::Timeout(_)
                | ProxyError::Upstream(_)
        )
    }

    /// Whether the client connection should be closed after this response (its framing may be off).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::Invalid(_)
                | ProxyError::BodyTimeout(_)
                | ProxyError::ClientAborted(_)
                | ProxyError::MalformedBody(_)
        )
    }
}

/// Describes an error and its sources in one line, outermost first.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
