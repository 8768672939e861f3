//! The protections in front of the contract's services, on a real socket.
//!
//! The transport's, spoken to in raw HTTP/2 frames so that nothing answers for the test: the server
//! advertises its limit of concurrent streams per connection, and closes a connection whose peer
//! stops answering its keepalive PINGs. Each caller's rate limit, on the server's manual clock.
//! And TLS, with certificates made by the test: mutual TLS admits only clients whose certificate its
//! CA signed, and no client that does not trust the server's.

mod common;

use common::*;
use interaction_server::clock::ManualClock;
use ixn_proto::auth::RateLimit;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::interaction::GetPlatformRequest;
use ixn_proto::testing::{Issued, Pki};
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const ACK: u8 = 0x1;

/// A server whose transport the test sets.
async fn start_with_transport(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut ixn_proto::hosting::Transport),
) -> TestServer {
    TestServer::start_configured(
        dir,
        test_platform(),
        ManualClock::starting_now(),
        |options| configure(&mut options.transport),
    )
    .await
}

/// One HTTP/2 frame: its type, flags and payload; none at the end of the connection.
async fn frame(tcp: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((header[3], header[4], payload))
}

#[tokio::test]
async fn the_stream_limit_is_advertised_and_a_peer_that_stops_answering_pings_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_transport(dir.path(), |transport| {
        transport.max_concurrent_streams = 7;
        transport.keepalive_interval = Duration::from_millis(100);
        transport.keepalive_timeout = Duration::from_millis(100);
    })
    .await;

    // A client that says hello and then never answers anything.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .await
        .unwrap();

    let seen = tokio::time::timeout(PATIENCE, async {
        let mut seen = Vec::new();
        while let Some(frame) = frame(&mut tcp).await {
            seen.push(frame);
        }
        seen
    })
    .await
    .expect("the server kept a connection whose peer never answered its PINGs");

    let (_, _, settings) = seen
        .iter()
        .find(|(kind, flags, _)| *kind == SETTINGS && flags & ACK == 0)
        .expect("the server sent no SETTINGS");
    let limit = settings
        .chunks_exact(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(limit, Some(7), "the advertised stream limit");
    let kinds: Vec<u8> = seen.iter().map(|(kind, _, _)| *kind).collect();
    let ping = kinds.iter().position(|k| *k == PING);
    let goaway = kinds.iter().position(|k| *k == GOAWAY);
    assert!(
        matches!((ping, goaway), (Some(p), Some(g)) if p < g),
        "expected a PING and then a GOAWAY before the close, saw frame types {kinds:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_caller_over_its_rate_is_refused_with_rate_limited_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_transport(dir.path(), |transport| {
        transport.rate_limit = Some(RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        });
    })
    .await;
    let mut busy = server.client(Who::media_server("busy")).await;
    let mut other = server.client(Who::media_server("other")).await;

    // A burst of three, then the fourth call within the same second is refused.
    let mut submitted = HashSet::new();
    for _ in 0..3 {
        submitted.insert(busy.submit("q", "chat").await.unwrap().interaction_id);
    }
    let refused = busy.submit("q", "chat").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let failure = Failure::from_status(&refused).unwrap();
    assert_eq!(failure.reason, R::RateLimited);
    assert_eq!(failure.metadata["retry_after_ms"], "1000");

    // session-service's identity, which calls for every agent, is not limited.
    let mut service = server.client(Who::service()).await;
    for _ in 0..5 {
        service
            .agents
            .get_platform(GetPlatformRequest {})
            .await
            .unwrap();
    }

    // Another caller has an allowance of its own.
    let last = other.submit("q", "chat").await.unwrap();
    submitted.insert(last.interaction_id.clone());

    // The refused call changed nothing: the log holds exactly the four accepted submits.
    let mut admin = server.client(Who::admin()).await;
    let mut log = admin.subscribe(0).await;
    let mut logged = HashSet::new();
    loop {
        let e = log.next().await.unwrap();
        let id = ixn_proto::event::interaction_id(e.body.as_ref().unwrap()).map(str::to_owned);
        logged.extend(id.clone());
        if id.as_deref() == Some(last.interaction_id.as_str()) {
            break;
        }
    }
    assert_eq!(logged, submitted);

    // A second later the caller has one more call, and only one.
    server.clock.advance(Duration::from_secs(1));
    busy.submit("q", "chat").await.unwrap();
    let again = busy.submit("q", "chat").await.unwrap_err();
    assert_eq!(Failure::from_status(&again).unwrap().reason, R::RateLimited);
    server.stop().await;
}

/// A media server's client over TLS with `tls`, or in plaintext.
async fn client_over(
    server: &TestServer,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Client {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", server.addr)).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let who = Who::media_server("ms");
    let token = who.token(server.clock.now() / 1_000_000, 3_600);
    Client::new(endpoint.connect_lazy(), who, token)
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_its_ca_signed_that_trust_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("ixn test CA");
    let stranger = Pki::new("another CA");
    let certificate: Issued = ca.server("localhost");
    let server = start_with_transport(dir.path(), |transport| {
        transport.tls = Some(ca.server_tls(&certificate, true))
    })
    .await;

    let mut refused = Vec::new();
    for (what, tls) in [
        ("plaintext", None),
        ("no client certificate", Some(ca.client_tls(None))),
        (
            "a client certificate of another CA",
            Some(ca.client_tls(Some(&stranger.client("ms")))),
        ),
        (
            "not trusting the server's CA",
            Some(stranger.client_tls(Some(&ca.client("ms")))),
        ),
    ] {
        let mut client = client_over(&server, tls).await;
        if let Ok(accepted) = client.submit("q", "chat").await {
            refused.push(format!("{what}: accepted {}", accepted.interaction_id));
        }
    }
    assert!(refused.is_empty(), "{refused:?}");

    // The client the CA signed, trusting it, is served; nothing the others sent was.
    let mut trusted = client_over(&server, Some(ca.client_tls(Some(&ca.client("ms"))))).await;
    let submitted = trusted.submit("q", "chat").await.unwrap();
    let mut log = trusted.subscribe(0).await;
    let first = log.next().await.unwrap();
    assert_eq!(
        ixn_proto::event::interaction_id(first.body.as_ref().unwrap()),
        Some(submitted.interaction_id.as_str()),
        "the first event of the log is the trusted client's submit"
    );
    server.stop().await;
}

#[tokio::test]
async fn tls_without_a_client_ca_serves_any_client_that_trusts_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("ixn test CA");
    let certificate = ca.server("localhost");
    let server = start_with_transport(dir.path(), |transport| {
        transport.tls = Some(ca.server_tls(&certificate, false))
    })
    .await;
    let mut client = client_over(&server, Some(ca.client_tls(None))).await;
    client.submit("q", "chat").await.unwrap();
    let mut plaintext = client_over(&server, None).await;
    plaintext
        .submit("q", "chat")
        .await
        .expect_err("a plaintext client was served by a TLS server");
    server.stop().await;
}
