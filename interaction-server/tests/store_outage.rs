//! A store that stops answering: commands are refused with UNAVAILABLE and change nothing, health
//! says NOT_SERVING (so a load balancer sends the traffic elsewhere) while liveness stays SERVING
//! (a restart would not help), and once the store answers again the server probes its way back
//! to SERVING by itself. Built only with the `failpoints` feature (`required-features`).

mod common;

use common::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const COMMIT: &str = "commit interactions.db";

#[tokio::test]
async fn an_unreachable_store_is_not_serving_until_it_answers_again() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut health = HealthClient::new(server.channel().await);
    let mut overall = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        let status = tokio::time::timeout(PATIENCE, overall.message())
            .await
            .expect("a health change")
            .unwrap()
            .expect("the watch stays open");
        ServingStatus::try_from(status.status).unwrap()
    };
    assert_eq!(next().await, ServingStatus::Serving);

    let mut media = server.client(Who::media_server("m1")).await;
    let mut reporter = server.client(Who::reporter()).await;
    let before = media.submit("q", "chat").await.unwrap();
    let mut feed = reporter.subscribe(0).await;
    assert_eq!(feed.next().await.unwrap().sequence, 1);

    fail::cfg(COMMIT, "return").unwrap();
    let refused = media.stop(&before.interaction_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(next().await, ServingStatus::NotServing);
    let check = async |service: &str| {
        let answer = HealthClient::new(server.channel().await)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(answer.status).unwrap()
    };
    assert_eq!(
        check("ixn.interaction.v1.InteractionService").await,
        ServingStatus::NotServing
    );
    assert_eq!(check("liveness").await, ServingStatus::Serving);
    let unchanged = media.get(&before.interaction_id).await.unwrap();
    assert_eq!(unchanged, before, "a refused command changes nothing");

    fail::remove(COMMIT);
    assert_eq!(
        next().await,
        ServingStatus::Serving,
        "the probe finds the store back"
    );
    media.stop(&before.interaction_id).await.unwrap();
    // The log went on from where it was: the refused stop took no sequence.
    let stopped = feed.next().await.unwrap();
    assert_eq!(stopped.sequence, 2);
    assert!(is(&stopped.body, "ProcessingStopped"));
    // A health watch is a call in flight like any other: the drain would wait for it.
    drop(overall);
    server.stop().await;
    scenario.teardown();
}
