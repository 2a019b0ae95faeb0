//! tandem: an HTTP reverse-proxy load balancer.
//!
//! Code map (ARCHITECTURE.md has the path of one request and the invariants):
//! - [`app`]: a whole tandem (listeners, session store, runtime) as `main` and tests start it.
//! - [`config`]: the TOML file, validated into a typed `Config` with located errors.
//! - [`server`]: listeners, connection cap, HTTP/1.1 + h2c, idle timeout, graceful drain.
//! - [`proxy_protocol`]: the PROXY protocol header (v1, v2) an L4 balancer puts before a connection.
//! - [`proxy`]: the per-request pipeline, header hygiene, the upstream client, upgrades.
//! - [`routes`]: Host/path → pool.
//! - [`sticky`]: session ids in cookies and URLs, and the route they end in.
//! - [`placement`]: where sessions live when their id does not say (takeovers, learned ids), and session cookie shapes.
//! - [`balancer`]: which backend of a pool gets a request; one file per method.
//! - [`health`]: active health checks that mark backends up and down.
//! - [`pool`]: pools and backends as the request path sees them, with live counters.
//! - [`retry`]: which failed attempts go to another backend, and the retry budget.
//! - [`runtime`]: the current snapshot of routes and pools, swapped on reload.
//! - [`error`]: the only map from a failure to an HTTP response.
//! - [`logging`]: application and access logs.
//! - [`session`]: the proxy-mode session store and its contract with backends.
//! - [`admin`]: the admin listener: health, metrics, the pools and session APIs.
//! - [`status`]: the HTML status page.
//! - [`cluster`]: tandem peers: authenticated connections, heartbeats, liveness.
//! - [`tls`]: certificates, SNI and the rustls settings of the TLS listeners.
//! - [`metrics`]: the Prometheus registry and what records into it.
//! - [`notify`]: readiness, reloads and drains told to systemd (`Type=notify`).
//! - [`healthcheck`]: `tandem healthcheck URL`, the probe of container health checks.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod balancer;
pub mod cluster;
pub mod config;
pub mod error;
pub mod health;
pub mod healthcheck;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod placement;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod retry;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod session;
pub mod status;
pub mod sticky;
pub mod tls;
