//! Who is speaking, end to end against the real RabbitMQ and SQLite: in token mode every
//! forged or broken token is refused with its close code, the `user` of every event is the
//! token's subject whatever the client writes, and a private room shows nothing of itself
//! to a non-member (join, live events, the latest-events window, a gateway restarted from
//! the archive), while a removed member stops receiving at once, on another gateway too,
//! and gets nothing more of the room through a gateway that was cut off from the broker
//! when it happened (live or by gap repair). A gateway restarted mid-conversation, one kept
//! running and the archiver answer every reader the same for every room. In open mode
//! every speaker is marked as a guest.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chat_core::auth::{claims_for, mint, Claims};
use chat_core::testkit::{eventually, http_get, http_get_with, unique_prefix, Broker};
use chat_core::{Event, EventKind, Visibility};
use serde_json::{json, Value};
use support::{
    health, start_archiver, start_archiver_with, start_gateway, start_gateway_via, BrokerProxy,
    Client, Service, WAIT,
};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

fn token(sub: &str, name: &str) -> String {
    mint(
        SECRET,
        &claims_for(sub, Some(name), Duration::from_secs(600)),
    )
    .unwrap()
}

fn token_with(claims: &Claims) -> String {
    mint(SECRET, claims).unwrap()
}

async fn token_gateway(prefix: &str, id: &str, extra: &[&str]) -> Service {
    let mut args = vec![
        "--gateway-id",
        id,
        "--auth-mode",
        "token",
        "--auth-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    start_gateway(prefix, &args).await
}

/// Connects and presents a token.
async fn signed_in(gateway: &Service, sub: &str, name: &str) -> Client {
    let mut client = Client::connect(gateway).await;
    let authenticated = client.authenticate(&token(sub, name)).await;
    assert_eq!(authenticated["user"], sub, "{authenticated}");
    client
}

/// Connects, sends `first` as the first frame and returns the close code.
async fn refused(gateway: &Service, first: Value) -> u16 {
    let mut client = Client::connect(gateway).await;
    client.send(first).await;
    client.closed_with().await
}

#[tokio::test]
async fn each_forged_or_broken_token_is_refused_with_its_close_code() {
    let prefix = unique_prefix("tokens");
    let broker = Broker::connect(&prefix).await;
    let gateway = token_gateway(
        &prefix,
        "gw-tokens",
        &["--auth-audience", "chat", "--auth-timeout-ms", "300"],
    )
    .await;
    let mut good = claims_for("alice", Some("Alice"), Duration::from_secs(600));
    good.aud = Some("chat".into());

    let b64 = |json: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(&good).unwrap())
    );
    let other_secret = mint("another-secret-of-at-least-32-bytes", &good).unwrap();
    let mut expired = good.clone();
    expired.exp = chrono::Utc::now().timestamp() - 5;
    let mut billing = good.clone();
    billing.aud = Some("billing".into());
    let mut forged = token_with(&good);
    forged.replace_range(forged.len() - 4.., "AAAA");
    // The right secret, the wrong algorithm: this gateway accepts HS256 only.
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for (what, token, code) in [
        ("garbage", "not-a-token".to_owned(), 4001),
        ("alg none", unsigned, 4001),
        ("another algorithm", hs384, 4001),
        ("another secret", other_secret, 4001),
        ("a changed signature", forged, 4001),
        ("another audience", token_with(&billing), 4001),
        ("expired", token_with(&expired), 4002),
    ] {
        let code_seen = refused(&gateway, json!({"type": "auth", "token": token})).await;
        assert_eq!(code_seen, code, "{what}");
    }
    // Anything else first, or nothing at all in time: 4001.
    let code = refused(
        &gateway,
        json!({"type": "join", "room": "lobby", "name": "alice"}),
    )
    .await;
    assert_eq!(code, 4001);
    let mut silent = Client::connect(&gateway).await;
    assert_eq!(silent.closed_with().await, 4001);
    // The valid one is accepted.
    let mut alice = Client::connect(&gateway).await;
    let authenticated = alice.authenticate(&token_with(&good)).await;
    assert_eq!(authenticated["name"], "Alice");
    assert!(authenticated["expires_at"].as_str().unwrap().ends_with('Z'));
    // Every refusal is counted by its reason, for an operator to see forging attempts.
    // (The services of this test binary share one metrics registry: other tests' refusals
    // can only add to these counts.)
    let (_, metrics) = http_get(gateway.addr(), "/metrics").await;
    for (reason, count) in [
        ("malformed", 1),
        ("algorithm", 2),
        ("signature", 2),
        ("audience", 1),
        ("expired", 1),
        ("missing", 2),
    ] {
        let seen = refusals(&metrics, reason);
        assert!(seen >= count, "{reason}: {seen} < {count} in:\n{metrics}");
    }

    gateway.stop().await;
    broker.cleanup().await;
}

/// `chat_auth_refused_total{reason}` as the metrics page shows it (0 when absent).
fn refusals(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("chat_auth_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A test key pair (chat-core/tests/keys): the gateway has the public half only.
fn key_file(name: &str) -> String {
    format!(
        "{}/../chat-core/tests/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The Python interpreter with PyJWT (`CHAT_PYTHON`, made by scripts/test.sh, or
/// `python3`); the test fails, saying how to get it, rather than skip.
fn python_with_pyjwt() -> String {
    let python = std::env::var("CHAT_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import jwt, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} cannot import jwt: run `pip install -r examples/mint-token/requirements.txt`, \
         or set CHAT_PYTHON to an interpreter that has it (scripts/test.sh makes one)"
    );
    python
}

#[tokio::test]
async fn a_gateway_with_a_public_key_accepts_what_an_application_backend_mints_and_nothing_signed_otherwise(
) {
    let prefix = unique_prefix("pubkey");
    let broker = Broker::connect(&prefix).await;
    let public = key_file("ed25519-public.pem");
    let gateway = start_gateway(
        &prefix,
        &[
            "--gateway-id",
            "gw-pubkey",
            "--auth-mode",
            "token",
            "--auth-public-key",
            &public,
            "--auth-timeout-ms",
            "300",
        ],
    )
    .await;
    // The backend example (examples/mint-token) signs with the private half.
    let minted = std::process::Command::new(python_with_pyjwt())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/mint-token/mint_token.py"
        ))
        .args(["--sub", "u-42", "--name", "Zoë", "--ttl", "600"])
        .args(["--private-key", &key_file("ed25519-private.pem")])
        .output()
        .expect("run the Python minter");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let mut zoe = Client::connect(&gateway).await;
    let authenticated = zoe.authenticate(&token).await;
    assert_eq!(authenticated["user"], "u-42", "{authenticated}");
    assert_eq!(authenticated["name"], "Zoë");

    let claims = claims_for("u-42", Some("Zoë"), Duration::from_secs(600));
    // The classic confusion: HS256 "signed" with the public key as the secret.
    let public_pem = std::fs::read(&public).unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    // Another key pair's signature, with the algorithm the gateway expects.
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(
            &std::fs::read(key_file("rsa-private.pem")).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    for (what, token) in [("HS256 with the public key", confused), ("RS256", other)] {
        let code = refused(&gateway, json!({"type": "auth", "token": token})).await;
        assert_eq!(code, 4001, "{what}");
    }
    let (_, metrics) = http_get(gateway.addr(), "/metrics").await;
    assert!(refusals(&metrics, "algorithm") >= 2, "{metrics}");

    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_verified_user_speaks_as_their_token_subject_whatever_the_frames_say() {
    let prefix = unique_prefix("subject");
    let broker = Broker::connect(&prefix).await;
    // Token mode serves joins once its access projection is replayed from the archive.
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let gateway = token_gateway(&prefix, "gw-subject", &[]).await;
    let mut mallory = signed_in(&gateway, "mallory", "Mallory").await;
    // Claims alice's name in the join and her id in the say: both are ignored.
    mallory.join("lobby", "alice").await;
    mallory
        .send(
            json!({"type": "say", "room": "lobby", "text": "I am alice", "user": "alice",
                     "name": "Alice", "guest": false, "ref": "s"}),
        )
        .await;
    let event = mallory.event("lobby", "message").await;
    assert_eq!(event["user"], "mallory");
    assert_eq!(event["name"], "Mallory");
    assert!(event.get("guest").is_none(), "{event}");
    // A fresh token for the same user is taken; one for another user closes with 4001.
    let hello_again = mallory.authenticate(&token("mallory", "Mal")).await;
    assert_eq!(hello_again["name"], "Mal");
    mallory
        .send(json!({"type": "auth", "token": token("alice", "Alice")}))
        .await;
    assert_eq!(mallory.closed_with().await, 4001);

    gateway.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_token_that_expires_closes_the_connection_unless_refreshed_in_time() {
    let prefix = unique_prefix("expiry");
    let broker = Broker::connect(&prefix).await;
    let gateway = token_gateway(&prefix, "gw-expiry", &["--auth-grace-ms", "100"]).await;
    let short = |sub: &str| {
        let mut claims = claims_for(sub, None, Duration::from_secs(2));
        claims.exp = chrono::Utc::now().timestamp() + 2;
        token_with(&claims)
    };
    let mut lapsing = Client::connect(&gateway).await;
    lapsing.authenticate(&short("alice")).await;
    let mut refreshed = Client::connect(&gateway).await;
    refreshed.authenticate(&short("bob")).await;
    refreshed.authenticate(&token("bob", "Bob")).await;
    assert_eq!(lapsing.closed_with().await, 4002);
    // Well past the first token's end, the refreshed connection still answers.
    refreshed.send(json!({"type": "ping", "ref": "p"})).await;
    let pong = refreshed.recv_until(|f| f["type"] == "pong").await;
    assert_eq!(pong["ref"], "p");

    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn open_mode_says_so_and_marks_every_speaker_as_a_guest() {
    let prefix = unique_prefix("guests");
    let broker = Broker::connect(&prefix).await;
    let gateway = start_gateway(&prefix, &[]).await;
    let mut client = Client::connect(&gateway).await;
    client.join("lobby", "alice").await;
    client.say("lobby", "hi", "s").await;
    let event = client.event("lobby", "message").await;
    assert_eq!(event["guest"], true);
    assert_eq!(event["user"], "alice");
    // A guest cannot create rooms or present a token here.
    let answer = client
        .request(
            json!({"type": "create_room", "room": "mine", "visibility": "private"}),
            "c",
        )
        .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    client
        .send(json!({"type": "auth", "token": token("alice", "Alice")}))
        .await;
    let answer = client
        .recv_until(|f| f["type"] == "error" && f["code"] != "history_unavailable")
        .await;
    assert_eq!(answer["code"], "invalid_field", "{answer}");
    let hello = {
        let url = format!("ws://{}/ws", gateway.addr());
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        use futures_util::StreamExt;
        let first = ws.next().await.unwrap().unwrap();
        serde_json::from_str::<Value>(first.to_text().unwrap()).unwrap()
    };
    assert_eq!(hello["auth"], "open");

    gateway.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_private_room_shows_nothing_to_a_non_member_and_membership_changes_apply_live() {
    let prefix = unique_prefix("private");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let archiver = start_archiver(&prefix, &dir.path().join("archive.db")).await;
    let one = token_gateway(&prefix, "gw-one", &[]).await;
    let two = token_gateway(&prefix, "gw-two", &[]).await;
    let mut alice = signed_in(&one, "alice", "Alice").await;
    let mut bob = signed_in(&two, "bob", "Bob").await;
    let mut mallory = signed_in(&two, "mallory", "Mallory").await;

    let created = alice
        .request(
            json!({"type": "create_room", "room": "board", "visibility": "private"}),
            "c1",
        )
        .await;
    assert_eq!(created["type"], "ack", "{created}");
    // The same name again, by anyone: refused once the creation has reached Mallory's
    // gateway. Until then that gateway cannot know of it; a creation it accepts meanwhile
    // is refused by every projection (the first creation wins, in the archive's order).
    let mut attempt = 0;
    let again = loop {
        attempt += 1;
        let again = mallory
            .request(
                json!({"type": "create_room", "room": "board", "visibility": "public"}),
                &format!("c2-{attempt}"),
            )
            .await;
        if again["code"] == "forbidden" || attempt == 100 {
            break again;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again["code"], "forbidden", "{again}");
    // Only the owner adds members.
    let by_mallory = mallory
        .request(
            json!({"type": "add_member", "room": "board", "user": "mallory"}),
            "m0",
        )
        .await;
    assert_eq!(by_mallory["code"], "forbidden");
    let added = alice
        .request(
            json!({"type": "add_member", "room": "board", "user": "bob"}),
            "m1",
        )
        .await;
    assert_eq!(added["type"], "ack", "{added}");
    alice.join("board", "alice").await;
    alice.say("board", "first secret", "s1").await;

    // Bob, on the other gateway, joins once his membership has reached it (and the
    // message the archive).
    let joined = join_until_allowed(&mut bob, "board", 1).await;
    assert_eq!(texts(&joined["history"]), ["first secret"]);
    // Mallory gets `forbidden` and nothing else of the room.
    mallory
        .send(json!({"type": "join", "room": "board", "ref": "j"}))
        .await;
    let refusal = mallory.recv_until(|f| f["ref"] == "j").await;
    assert_eq!(refusal["type"], "error");
    assert_eq!(refusal["code"], "forbidden");

    alice.say("board", "second secret", "s2").await;
    let live = bob
        .recv_until(|f| f["type"] == "event" && f["event"]["text"] == "second secret")
        .await;
    assert_eq!(live["event"]["room"], "board");

    // Bob is removed: he is told at once and receives nothing more of the room.
    let removed = alice
        .request(
            json!({"type": "remove_member", "room": "board", "user": "bob"}),
            "m2",
        )
        .await;
    assert_eq!(removed["type"], "ack");
    let notice = bob.recv_until(|f| f["type"] == "removed").await;
    assert_eq!(notice["room"], "board");
    alice.say("board", "third secret", "s3").await;
    let said = bob
        .request(
            json!({"type": "say", "room": "board", "text": "still here?"}),
            "b1",
        )
        .await;
    assert_eq!(said["code"], "forbidden");

    // A gateway started now rebuilds the same access state from the archive.
    let three = token_gateway(&prefix, "gw-three", &[]).await;
    let mut bob_again = signed_in(&three, "bob", "Bob").await;
    bob_again
        .send(json!({"type": "join", "room": "board", "ref": "j2"}))
        .await;
    let refusal = bob_again.recv_until(|f| f["ref"] == "j2").await;
    assert_eq!(refusal["code"], "forbidden", "{refusal}");
    let mut alice_again = signed_in(&three, "alice", "Alice").await;
    let joined = alice_again.join("board", "alice").await;
    assert_eq!(joined["private"], true, "the page shows a lock");
    assert_eq!(
        texts(&joined["history"]),
        ["first secret", "second secret", "third secret"]
    );

    // Nothing of the room reached the non-members, in any frame: Mallory saw none of its
    // events, Bob none after his removal.
    for frame in mallory.drain_for(Duration::from_millis(300)).await {
        assert!(!frame.to_string().contains("secret"), "leaked: {frame}");
        assert!(
            frame["type"] != "event" || frame["event"]["room"] != "board",
            "leaked: {frame}"
        );
    }
    let after_removal: Vec<Value> = [
        bob.drain_for(Duration::from_millis(300)).await,
        bob_again.drain_for(Duration::from_millis(300)).await,
    ]
    .concat();
    for frame in after_removal {
        assert!(
            !frame.to_string().contains("third secret"),
            "leaked: {frame}"
        );
    }

    for service in [one, two, three, archiver] {
        service.stop().await;
    }
    broker.cleanup().await;
}

#[tokio::test]
async fn a_member_removed_while_their_gateway_was_cut_off_gets_nothing_more_of_the_room() {
    let prefix = unique_prefix("private-gap");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("archive.db");
    let token_mode = ["--auth-mode", "token", "--auth-secret", SECRET];
    let archiver = start_archiver_with(&prefix, &db, &token_mode).await;
    let proxy = BrokerProxy::start().await;
    let one = token_gateway(&prefix, "gw-one", &[]).await;
    let mut via_proxy = vec!["--gateway-id", "gw-two"];
    via_proxy.extend(token_mode);
    let two = start_gateway_via(&prefix, &proxy.url, &via_proxy).await;
    let mut alice = signed_in(&one, "alice", "Alice").await;
    let mut bob = signed_in(&two, "bob", "Bob").await;
    let mut carol = signed_in(&two, "carol", "Carol").await;
    let mut mallory = signed_in(&two, "mallory", "Mallory").await;
    for (n, frame) in [
        json!({"type": "create_room", "room": "board", "visibility": "private"}),
        json!({"type": "add_member", "room": "board", "user": "bob"}),
        json!({"type": "add_member", "room": "board", "user": "carol"}),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = alice.request(frame, &format!("c{n}")).await;
        assert_eq!(answer["type"], "ack", "{answer}");
    }
    alice.join("board", "alice").await;
    alice.join("lobby", "alice").await;
    let before = alice.say("board", "before the outage", "s0").await;
    let before = before["id"]
        .as_str()
        .expect("an ack with the id")
        .to_owned();
    join_until_allowed(&mut bob, "board", 1).await;
    join_until_allowed(&mut carol, "board", 1).await;
    bob.join("lobby", "bob").await;
    mallory.join("lobby", "mallory").await;

    // Bob's gateway loses the broker. Meanwhile Bob is removed and both rooms go on.
    proxy.cut();
    eventually(WAIT, "gateway two notices the lost link", || async {
        (health(&two).await.0 == 503).then_some(())
    })
    .await;
    let removed = alice
        .request(
            json!({"type": "remove_member", "room": "board", "user": "bob"}),
            "r1",
        )
        .await;
    assert_eq!(removed["type"], "ack", "{removed}");
    assert_eq!(
        alice.say("board", "secret after the removal", "s1").await["type"],
        "ack"
    );
    assert_eq!(
        alice.say("lobby", "public during the outage", "p1").await["type"],
        "ack"
    );
    let admin = admin_token();
    eventually(
        WAIT,
        "the archive has the removal and what followed",
        || archived_texts(&archiver, "board", &admin),
    )
    .await;
    // The archiver stops too, so the replay of the membership log after the outage waits:
    // the gateway is linked again with a projection that still counts Bob as a member.
    archiver.stop().await;
    proxy.restore();
    eventually(WAIT, "gateway two linked again", || async {
        (health(&two).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        alice.say("board", "secret during the replay", "s2").await["type"],
        "ack"
    );
    assert_eq!(
        alice.say("lobby", "public during the replay", "p2").await["type"],
        "ack"
    );
    // The public room flows at once; the private one waits for the replay.
    for client in [&mut bob, &mut mallory] {
        client
            .recv_until(|f| f["event"]["text"] == "public during the replay")
            .await;
    }
    let said = bob
        .request(
            json!({"type": "say", "room": "board", "text": "am I still in?"}),
            "b1",
        )
        .await;
    assert_eq!(said["code"], "unavailable", "{said}");
    // Nor may he act on the room's messages: refused for the replay, not for the archive.
    let reacted = bob
        .request(
            json!({"type": "react", "room": "board", "target": before, "key": "👍", "op": "add"}),
            "b2",
        )
        .await;
    assert_eq!(reacted["code"], "unavailable", "{reacted}");
    assert!(
        reacted["message"]
            .as_str()
            .is_some_and(|m| m.contains("catching up on membership")),
        "{reacted}"
    );
    mallory
        .send(json!({"type": "join", "room": "board", "ref": "mj"}))
        .await;
    let refusal = mallory.recv_until(|f| f["ref"] == "mj").await;
    assert_eq!(refusal["type"], "error", "{refusal}");

    // The archiver is back: the replay tells Bob he was removed, and the gap repair brings
    // Carol what she missed of the room, and Bob what he missed of the lobby.
    let archiver = start_archiver_with(&prefix, &db, &token_mode).await;
    let notice = bob.recv_until(|f| f["type"] == "removed").await;
    assert_eq!(notice["room"], "board");
    for text in ["secret after the removal", "secret during the replay"] {
        carol.recv_until(|f| f["event"]["text"] == text).await;
    }
    bob.recv_until(|f| f["event"]["text"] == "public during the outage")
        .await;
    // Past the repair's second pass: nothing of the room after his removal reached Bob,
    // nothing of it at all reached Mallory.
    let bob_saw = bob.drain_for(Duration::from_secs(4)).await;
    for frame in &bob_saw {
        assert!(!frame.to_string().contains("secret"), "leaked: {frame}");
    }
    for frame in carol.drain_for(Duration::from_millis(300)).await {
        assert_ne!(frame["event"]["type"], "react", "published: {frame}");
    }
    for frame in mallory.drain_for(Duration::from_millis(300)).await {
        assert!(
            !frame.to_string().contains("secret") && frame["event"]["room"] != "board",
            "leaked: {frame}"
        );
    }
    for service in [one, two, archiver] {
        service.stop().await;
    }
    drop(proxy);
    broker.cleanup().await;
}

#[tokio::test]
async fn a_gateway_that_has_not_heard_of_a_private_room_yet_withholds_its_history_from_a_non_member(
) {
    let prefix = unique_prefix("access-behind");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let token_mode = ["--auth-mode", "token", "--auth-secret", SECRET];
    let archiver = start_archiver_with(&prefix, &dir.path().join("archive.db"), &token_mode).await;
    let gateway = token_gateway(&prefix, "gw-behind", &["--history-timeout-ms", "1000"]).await;
    // The archive learns of a private room and a secret said in it; the gateway's queue
    // does not (yet): its projection still takes the room for a public one.
    let mut created =
        Event::new(EventKind::RoomCreated, "vault", "alice", None, "gw-x").verified("Alice");
    created.visibility = Some(Visibility::Private);
    let secret = Event::new(
        EventKind::Message,
        "vault",
        "alice",
        Some("the combination".into()),
        "gw-x",
    )
    .verified("Alice");
    let archiver_queue = broker.topology.subscriber_queue("archiver");
    for event in [&created, &secret] {
        broker.publish_event_to(&archiver_queue, event).await;
    }
    let header = format!("Bearer {}", admin_token());
    eventually(WAIT, "the archive has the secret", || async {
        let (status, body) = http_get_with(
            archiver.addr(),
            "/api/rooms/vault/events",
            &[("Authorization", header.as_str())],
        )
        .await;
        (status == 200 && body.contains("the combination")).then_some(())
    })
    .await;

    let mut mallory = signed_in(&gateway, "mallory", "Mallory").await;
    mallory
        .send(json!({"type": "join", "room": "vault", "ref": "j"}))
        .await;
    let warning = mallory.recv_until(|f| f["ref"] == "j").await;
    assert_eq!(warning["code"], "history_unavailable", "{warning}");
    let joined = mallory.recv_until(|f| f["type"] == "joined").await;
    assert_eq!(joined["history"], json!([]), "{joined}");
    for frame in mallory.drain_for(Duration::from_millis(300)).await {
        assert!(
            !frame.to_string().contains("combination"),
            "leaked: {frame}"
        );
    }
    let (_, metrics) = http_get(gateway.addr(), "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("chat_history_access_behind_total ")),
        "{metrics}"
    );

    gateway.stop().await;
    archiver.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_restarted_gateway_a_running_one_and_the_archiver_answer_every_reader_alike() {
    let prefix = unique_prefix("access-alike");
    let broker = Broker::connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let token_mode = ["--auth-mode", "token", "--auth-secret", SECRET];
    let archiver = start_archiver_with(&prefix, &dir.path().join("archive.db"), &token_mode).await;
    let one = token_gateway(&prefix, "gw-one", &[]).await;
    let two = token_gateway(&prefix, "gw-two", &[]).await;
    let mut alice = signed_in(&two, "alice", "Alice").await;
    let mut dave = signed_in(&two, "dave", "Dave").await;
    let mut erin = signed_in(&two, "erin", "Erin").await;
    for (who, frame) in [
        (
            "alice",
            json!({"type": "create_room", "room": "board", "visibility": "private"}),
        ),
        (
            "alice",
            json!({"type": "add_member", "room": "board", "user": "bob"}),
        ),
        (
            "alice",
            json!({"type": "add_member", "room": "board", "user": "carol"}),
        ),
        (
            "alice",
            json!({"type": "remove_member", "room": "board", "user": "carol"}),
        ),
        (
            "alice",
            json!({"type": "add_member", "room": "board", "user": "dave"}),
        ),
        (
            "alice",
            json!({"type": "grant_role", "room": "board", "user": "dave", "role": "moderator"}),
        ),
        (
            "dave",
            json!({"type": "create_room", "room": "den", "visibility": "private"}),
        ),
        (
            "dave",
            json!({"type": "add_member", "room": "den", "user": "alice"}),
        ),
        (
            "erin",
            json!({"type": "create_room", "room": "plaza", "visibility": "public"}),
        ),
    ] {
        let client = match who {
            "alice" => &mut alice,
            "dave" => &mut dave,
            _ => &mut erin,
        };
        let answer = client.request(frame.clone(), "m").await;
        assert_eq!(answer["type"], "ack", "{frame}: {answer}");
    }
    // Another producer on the exchange breaks the rules: none of these changes anything.
    let mut guest_room = Event::new(EventKind::RoomCreated, "hideout", "mallory", None, "gw-x");
    guest_room.visibility = Some(Visibility::Private);
    let mut not_owner =
        Event::new(EventKind::MemberAdded, "board", "mallory", None, "gw-x").verified("M");
    not_owner.member = Some("mallory".to_owned());
    let mut owner_out =
        Event::new(EventKind::MemberRemoved, "den", "alice", None, "gw-x").verified("A");
    owner_out.member = Some("dave".to_owned());
    for event in [guest_room, not_owner, owner_out] {
        broker.publish_event(&event).await;
    }
    alice.join("board", "alice").await;
    alice.say("board", "mid-conversation", "s1").await;

    let mut expected = expected_answers(false);
    let archived = eventually(WAIT, "the archiver's answers", || async {
        let answers = archiver_answers(&archiver).await;
        (answers == expected).then_some(answers)
    })
    .await;
    assert_eq!(
        gateway_answers(&one).await,
        archived,
        "gateway one, running"
    );
    assert_eq!(
        gateway_answers(&two).await,
        archived,
        "gateway two, running"
    );

    // Gateway one restarts mid-conversation; membership changes while it is down.
    one.stop().await;
    alice.say("board", "while gateway one restarts", "s2").await;
    let answer = dave
        .request(
            json!({"type": "add_member", "room": "den", "user": "bob"}),
            "d1",
        )
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    // Dave moderates the board: he may change its members, Erin may not.
    let answer = erin
        .request(
            json!({"type": "add_member", "room": "board", "user": "erin"}),
            "e1",
        )
        .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    let answer = dave
        .request(
            json!({"type": "remove_member", "room": "board", "user": "bob"}),
            "d2",
        )
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    expected = expected_answers(true);
    let archived = eventually(WAIT, "the archiver's answers after the changes", || async {
        let answers = archiver_answers(&archiver).await;
        (answers == expected).then_some(answers)
    })
    .await;
    let one = token_gateway(&prefix, "gw-one", &[]).await;
    assert_eq!(
        gateway_answers(&one).await,
        archived,
        "gateway one, rebuilt from the archive"
    );
    assert_eq!(
        gateway_answers(&two).await,
        archived,
        "gateway two, kept current live"
    );

    for service in [one, two, archiver] {
        service.stop().await;
    }
    broker.cleanup().await;
}

/// The readers and rooms every projection is asked about.
const READERS: [&str; 7] = ["alice", "bob", "carol", "dave", "erin", "mallory", "root"];
const ROOMS: [&str; 5] = ["board", "den", "plaza", "lobby", "hideout"];

/// Who may read what in `a_restarted_gateway_…`, before and after the changes made while
/// gateway one was down (Bob added to den, removed from board by Dave, its moderator).
/// `root` is an admin.
fn expected_answers(changed: bool) -> BTreeMap<(String, String), bool> {
    let mut answers = BTreeMap::new();
    for reader in READERS {
        for room in ROOMS {
            let allowed = match room {
                "board" => {
                    ["alice", "dave", "root"].contains(&reader) || (reader == "bob" && !changed)
                }
                "den" => {
                    ["dave", "alice", "root"].contains(&reader) || (reader == "bob" && changed)
                }
                _ => true,
            };
            answers.insert((reader.to_owned(), room.to_owned()), allowed);
        }
    }
    answers
}

fn reader_token(reader: &str) -> String {
    if reader == "root" {
        admin_token()
    } else {
        token(reader, reader)
    }
}

fn admin_token() -> String {
    let mut claims = claims_for("root", Some("Root"), Duration::from_secs(600));
    claims.admin = true;
    token_with(&claims)
}

/// Whether each reader may join each room, as the gateway answers.
async fn gateway_answers(gateway: &Service) -> BTreeMap<(String, String), bool> {
    let mut answers = BTreeMap::new();
    for reader in READERS {
        let mut client = Client::connect(gateway).await;
        client.authenticate(&reader_token(reader)).await;
        for room in ROOMS {
            let r#ref = format!("{reader}-{room}");
            client
                .send(json!({"type": "join", "room": room, "ref": r#ref}))
                .await;
            let answer = client
                .recv_until(|f| {
                    f["ref"] == r#ref.as_str() && (f["type"] == "joined" || f["type"] == "error")
                })
                .await;
            let allowed = match (answer["type"].as_str(), answer["code"].as_str()) {
                (Some("joined"), _) => true,
                (_, Some("forbidden")) => false,
                _ => panic!("{reader} joining {room}: {answer}"),
            };
            answers.insert((reader.to_owned(), room.to_owned()), allowed);
        }
    }
    answers
}

/// Whether each reader may read each room's history, as the archiver's API answers.
async fn archiver_answers(archiver: &Service) -> BTreeMap<(String, String), bool> {
    let mut answers = BTreeMap::new();
    for reader in READERS {
        let header = format!("Bearer {}", reader_token(reader));
        for room in ROOMS {
            let path = format!("/api/rooms/{room}/events");
            let (status, body) = http_get_with(
                archiver.addr(),
                &path,
                &[("Authorization", header.as_str())],
            )
            .await;
            let allowed = match status {
                200 => true,
                403 => false,
                _ => panic!("{reader} reading {room}: {status} {body}"),
            };
            answers.insert((reader.to_owned(), room.to_owned()), allowed);
        }
    }
    answers
}

/// `Some` once the archive's `room` holds the messages of the gap test said before the
/// archiver stopped.
async fn archived_texts(archiver: &Service, room: &str, admin: &str) -> Option<()> {
    let header = format!("Bearer {admin}");
    let path = format!("/api/rooms/{room}/events?limit=1000");
    let (status, body) = http_get_with(
        archiver.addr(),
        &path,
        &[("Authorization", header.as_str())],
    )
    .await;
    if status != 200 {
        return None;
    }
    let body: Value = serde_json::from_str(&body).ok()?;
    texts(&body["events"])
        .iter()
        .any(|t| t == "secret after the removal")
        .then_some(())
}

/// Joins until the gateway's projection lets the client in (membership reaches another
/// gateway through the broker, a moment after the owner's ack) and the history holds at
/// least `messages` messages.
async fn join_until_allowed(client: &mut Client, room: &str, messages: usize) -> Value {
    for attempt in 0..100 {
        let r#ref = format!("join-{attempt}");
        client
            .send(json!({"type": "join", "room": room, "ref": r#ref}))
            .await;
        let answer = client
            .recv_until(|f| {
                f["ref"] == r#ref.as_str() && (f["type"] == "joined" || f["type"] == "error")
            })
            .await;
        if answer["type"] == "joined" {
            if texts(&answer["history"]).len() >= messages {
                return answer;
            }
        } else {
            assert_eq!(answer["code"], "forbidden", "{answer}");
            // A gateway that has not yet received the room's creation takes it for public
            // and lets the join in, then removes the client when the creation arrives and
            // refuses the join: that `removed` belongs to this attempt.
            client.discard(|f| f["type"] == "removed" && f["room"] == room);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never allowed into {room}");
}

fn texts(history: &Value) -> Vec<String> {
    history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}
