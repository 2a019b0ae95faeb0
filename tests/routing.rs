//! Host and path routing to pools.

mod support;

use support::*;

#[tokio::test]
async fn host_and_path_pick_the_most_specific_pool() {
    let site = Backend::start("site").await;
    let api = Backend::start("api").await;
    let shop = Backend::start("shop").await;
    let pools = format!(
        "{}{}{}",
        pool("site", "round_robin", "", &[&site]),
        pool("api", "round_robin", "paths = [\"/api\"]", &[&api]),
        pool(
            "shop",
            "round_robin",
            "hosts = [\"shop.example\"]",
            &[&shop]
        ),
    );
    let tandem = Tandem::start(&config(&pools));
    let client = client();
    let url = tandem.url("/");
    assert_eq!(
        get_with(&client, &url, &[("host", "www.example")])
            .await
            .body,
        "site"
    );
    assert_eq!(
        get_with(
            &client,
            &tandem.url("/api/items"),
            &[("host", "www.example")]
        )
        .await
        .body,
        "api"
    );
    assert_eq!(
        get_with(&client, &url, &[("host", "SHOP.example:8080")])
            .await
            .body,
        "shop"
    );
    assert_eq!(
        get_with(
            &client,
            &tandem.url("/api/items"),
            &[("host", "shop.example")]
        )
        .await
        .body,
        "shop"
    );
}

#[tokio::test]
async fn a_host_no_pool_serves_gets_404() {
    let shop = Backend::start("shop").await;
    let tandem = Tandem::start(&config(&pool(
        "shop",
        "round_robin",
        "hosts = [\"shop.example\"]",
        &[&shop],
    )));
    let answer = get_with(&client(), &tandem.url("/"), &[("host", "other.example")]).await;
    assert_eq!(answer.status, 404);
    assert!(answer.body.contains("404"), "{}", answer.body);
    assert_eq!(shop.count(), 0);
    tandem.wait_log("no pool serves host `other.example`");
    tandem.wait_access("status=404");
}
