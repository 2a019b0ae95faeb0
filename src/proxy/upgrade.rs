//! Protocol switches (WebSocket and other `Upgrade`s): once the backend has answered 101, the
//! client's and the backend's connections are joined byte for byte until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Spawns the tunnel; it starts when hyper hands over both upgraded connections.
pub fn tunnel(client: OnUpgrade, backend: OnUpgrade, backend_address: String) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(backend = %backend_address, %error, "upgrade failed before the tunnel opened");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => {
                tracing::debug!(backend = %backend_address, up, down, "upgraded connection closed")
            }
            Err(error) => {
                tracing::debug!(backend = %backend_address, %error, "upgraded connection ended")
            }
        }
    });
}
