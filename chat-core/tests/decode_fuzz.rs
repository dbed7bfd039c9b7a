//! Property tests of the event decoder, the gate every broker delivery passes: whatever
//! bytes another producer publishes, decoding never panics, and whatever it accepts is an
//! event every consumer can store, log and forward unchanged.

use chat_core::{logline, Event};
use proptest::prelude::*;
use serde_json::{json, Value};

/// JSON values of every shape, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::hash_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects that look like edits, deletions, reactions and role changes, with each field
/// sometimes wrong or missing, or given to the wrong kind.
fn action_like() -> impl Strategy<Value = Value> {
    let maybe =
        |s: BoxedStrategy<Value>| prop_oneof![3 => s, 1 => Just(Value::Null), 1 => any_json()];
    (
        prop_oneof![
            Just(json!("edit")),
            Just(json!("delete")),
            Just(json!("react")),
            Just(json!("role_granted")),
            Just(json!("role_revoked")),
            Just(json!("message")),
        ],
        maybe("[0-9a-f-]{1,40}".prop_map(Value::from).boxed()),
        maybe("[a-z \n]{1,20}[a-z]".prop_map(Value::from).boxed()),
        maybe(
            prop_oneof![
                Just(json!("👍")),
                Just(json!("🎉")),
                ".{0,12}".prop_map(Value::from)
            ]
            .boxed(),
        ),
        maybe(
            prop_oneof![
                Just(json!("add")),
                Just(json!("remove")),
                ".{0,6}".prop_map(Value::from)
            ]
            .boxed(),
        ),
        maybe(".{0,240}".prop_map(Value::from).boxed()),
        maybe(prop_oneof![Just(json!("moderator")), Just(json!("member"))].boxed()),
        maybe("[a-z]{1,10}".prop_map(Value::from).boxed()),
        prop_oneof![4 => Just(json!(2)), 1 => Just(json!(1))],
    )
        .prop_map(|(kind, target, text, key, op, reason, role, member, v)| {
            let mut event = json!({"v": v, "id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "type": kind, "room": "lobby", "user": "alice",
                "at": "2026-11-28T15:03:15.123Z", "gateway": "gw-1"});
            for (field, value) in [
                ("target", target),
                ("text", text),
                ("key", key),
                ("op", op),
                ("reason", reason),
                ("role", role),
                ("member", member),
            ] {
                if !value.is_null() {
                    event[field] = value;
                }
            }
            event
        })
}

/// Objects that look like events, with each field sometimes wrong.
fn event_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![4 => Just(json!(1)), 1 => any_json()],
        prop_oneof![
            Just(json!("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")),
            any_json()
        ],
        prop_oneof![
            Just(json!("message")),
            Just(json!("join")),
            Just(json!("leave")),
            any_json()
        ],
        prop_oneof![4 => "[A-Za-z0-9_-]{1,64}".prop_map(Value::from), 1 => any_json()],
        prop_oneof![4 => "[a-z]{1,20}".prop_map(Value::from), 2 => ".{1,40}".prop_map(Value::from), 1 => any_json()],
        prop_oneof![4 => "[a-z \n]{1,100}[a-z]".prop_map(Value::from), 2 => ".{0,200}".prop_map(Value::from), 1 => any_json()],
        prop_oneof![4 => Just(json!("2026-11-28T15:03:15.123Z")), 1 => any_json()],
        prop_oneof![4 => Just(json!("gw-1")), 1 => any_json()],
    )
        .prop_map(|(v, id, kind, room, user, text, at, gateway)| {
            json!({"v": v, "id": id, "type": kind, "room": room, "user": user,
                   "text": text, "at": at, "gateway": gateway})
        })
}

fn check_accepted(event: &Event) {
    assert!(event.validate().is_ok());
    // Exactly the fields of its kind, each valid.
    if event.kind.is_action() {
        assert!(event.target.as_deref().is_some_and(chat_core::event::is_id));
    }
    if let Some(key) = &event.key {
        assert_eq!(chat_core::normalize::reaction_key(key).as_ref(), Ok(key));
    }
    assert!(!event.deleted && event.edited_at.is_none() && event.reactions.is_empty());
    // What is accepted re-encodes to something accepted again, identically.
    let again = Event::decode(event.to_json().as_bytes()).expect("re-decodes");
    assert_eq!(&again, event);
    // And it is always exactly one log line.
    assert!(!logline::format(event).contains('\n'));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(event) = Event::decode(&bytes) {
            check_accepted(&event);
        }
    }

    #[test]
    fn arbitrary_json_never_panics_the_decoder(value in any_json()) {
        if let Ok(event) = Event::decode(value.to_string().as_bytes()) {
            check_accepted(&event);
        }
    }

    #[test]
    fn action_like_objects_are_accepted_only_with_exactly_their_kinds_valid_fields(value in action_like()) {
        if let Ok(event) = Event::decode(value.to_string().as_bytes()) {
            check_accepted(&event);
            let kind = value["type"].as_str().unwrap_or_default();
            for field in ["target", "text", "key", "op", "reason", "role", "member"] {
                let need = event.kind.need(
                    *chat_core::event::KindField::ALL.iter().find(|f| f.as_str() == field).unwrap(),
                );
                if need == chat_core::event::Need::Refused {
                    prop_assert!(value.get(field).is_none(), "{kind} accepted with {field}");
                }
            }
        }
    }

    #[test]
    fn event_like_objects_are_accepted_only_when_every_field_is_valid(value in event_like()) {
        if let Ok(event) = Event::decode(value.to_string().as_bytes()) {
            check_accepted(&event);
        }
    }
}
