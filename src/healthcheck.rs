//! `tandem healthcheck URL`: one GET, exit 0 on a 200 answer. Container images ship no curl
//! (the runtime image is Debian slim, and curl would add a dozen libraries to it), so a
//! `HEALTHCHECK` runs the tandem binary itself against its admin listener's `/healthz`.

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// Sends `GET url` (plain `http://` only) and waits for the response head, all within
/// `timeout`. `Ok` on 200; otherwise the reason, for the container's health log.
pub fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("`{url}` is not a URL: {error}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "`{url}`: only http:// URLs (the admin listener on loopback) are supported"
        ));
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(format!("`{url}` names no host"));
    };
    let address = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    let status = runtime.block_on(async {
        tokio::time::timeout(timeout, get(&address, uri))
            .await
            .map_err(|_| format!("no answer from {url} within {timeout:?}"))?
    })?;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}

async fn get(address: &str, uri: Uri) -> Result<StatusCode, String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| format!("cannot connect to {address}: {error}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("{address}: {error}"))?;
    tokio::spawn(connection);
    let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(target)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|error| format!("{error}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("{address}: {error}"))?;
    Ok(response.status())
}
