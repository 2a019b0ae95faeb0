//! What reaches the backend and what comes back: headers, protocols, bodies, upgrades.

mod support;

use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

use support::*;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_added() {
    let backend = Backend::start("b").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    let answer = get_with(
        &client(),
        &tandem.url("/headers"),
        &[
            ("host", "shop.example"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = answer.body.to_lowercase();
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te:",
        "6.6.6.6",
    ] {
        assert!(!seen.contains(gone), "backend saw `{gone}`:\n{seen}");
    }
    for present in [
        "x-kept: yes",
        "host: shop.example",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example",
    ] {
        assert!(
            seen.contains(present),
            "backend did not see `{present}`:\n{seen}"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_response_are_removed() {
    let backend = Backend::start("b").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    for client in [client(), h2c_client()] {
        let answer = get(&client, &tandem.url("/hop-by-hop")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["x-public"], "kept");
        assert!(
            !answer.headers.contains_key("x-internal"),
            "{:?}",
            answer.headers
        );
        assert!(
            !answer.headers.contains_key("keep-alive"),
            "{:?}",
            answer.headers
        );
    }
}

#[tokio::test]
async fn a_trusted_proxy_has_its_forwarded_chain_extended() {
    let backend = Backend::start("b").await;
    let pools = pool("web", "round_robin", "", &[&backend]);
    let tandem = Tandem::start(&config(&format!(
        "[forwarded]\ntrusted = [\"127.0.0.0/8\"]\n\n{pools}"
    )));
    let answer = get_with(
        &client(),
        &tandem.url("/headers"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert!(
        answer
            .body
            .contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{}",
        answer.body
    );
    assert!(
        answer.body.contains("x-forwarded-proto: https"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn h2c_requests_are_served_and_reach_the_backend_as_http1() {
    let backend = Backend::start("b").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    let request = Request::get(tandem.url("/headers"))
        .version(http::Version::HTTP_2)
        .body(empty())
        .unwrap();
    let response = h2c_client().request(request).await.expect("h2c request");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(&format!("host: {}", tandem.address)),
        "{body}"
    );
    tandem.wait_access("version=HTTP/2.0");
}

#[tokio::test]
async fn websocket_echo_through_tandem() {
    let backend = Backend::start("b").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    let url = format!("ws://{}/ws", tandem.address);
    let (mut socket, response) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("handshake in time")
            .expect("websocket handshake through tandem");
    assert_eq!(response.status(), 101);
    for i in 0..5 {
        let text = format!("message {i} ☃");
        socket.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(DEADLINE, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    socket.close(None).await.unwrap();
}

const GIB: u64 = 1 << 30;
const RSS_LIMIT: u64 = 100 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_streams_up_and_down_in_bounded_memory() {
    let backend = Backend::start("b").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    let client = client();

    let upload = Request::post(tandem.url("/upload"))
        .body(streamed_body(GIB))
        .unwrap();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(300), client.request(upload))
            .await
            .expect("upload within 5 minutes")
            .expect("upload through tandem");
    assert_eq!(response.status(), 200);
    let counted = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&counted),
        GIB.to_string(),
        "backend received a different size"
    );

    let download = Request::get(tandem.url(&format!("/download?bytes={GIB}")))
        .body(empty())
        .unwrap();
    let response = client
        .request(download)
        .await
        .expect("download through tandem");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0u64;
    let stream = async {
        while let Some(frame) = body.frame().await {
            received += frame
                .expect("download frame")
                .data_ref()
                .map_or(0, |d| d.len() as u64);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(300), stream)
        .await
        .expect("download within 5 minutes");
    assert_eq!(received, GIB);

    let peak = tandem.peak_rss();
    assert!(
        peak < RSS_LIMIT,
        "tandem's peak RSS was {} MiB moving 2 GiB",
        peak >> 20
    );
}
