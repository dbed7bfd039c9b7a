//! `GET /api/openapi.json`: an OpenAPI 3.1 document that describes every route the server
//! answers, and the events it serves.

use archiver::api::PATHS;
use chat_core::{Event, EventKind};
use serde_json::Value;

use crate::helpers::{message, Archived};

on_both_backends! {
    async fn the_openapi_document_describes_every_route_the_server_answers(backend) {
        let archived = Archived::new(backend, "openapi", &[message("lobby", "hello")]).await;
        let archiver = &archived.archiver;

        let (status, doc) = archiver.get("/api/openapi.json").await;
        assert_eq!(status, 200);
        let version = doc["openapi"].as_str().unwrap();
        assert!(version.starts_with("3.1."), "{version}");
        let mut served = PATHS.map(str::to_owned).to_vec();
        served.sort_unstable();
        assert_eq!(sorted_keys(&doc["paths"]), served);

        for path in PATHS {
            let url = path.replace("{room}", "lobby");
            let (status, body) = archiver.get(&url).await;
            assert_ne!(body["error"]["code"], "not_found", "{url} is not served");
            assert!(
                doc["paths"][path]["get"]["responses"][status.to_string()].is_object(),
                "{path} does not document its {status}: {body}"
            );
        }

        // The Event schema names exactly the fields of a served guest's message, a verified
        // user's `name`, the fields of edits, deletions and reactions, and the projection's;
        // those of a verified user's join (all but `text`, `guest` and `name`) are required.
        let schema = &doc["components"]["schemas"]["Event"];
        let (_, page) = archiver.get("/api/rooms/lobby/events").await;
        let mut served = sorted_keys(&page["events"][0]);
        for field in ["name", "target", "reason", "key", "op", "edited_at", "deleted", "reactions"] {
            served.push(field.to_owned());
        }
        served.sort_unstable();
        assert_eq!(sorted_keys(&schema["properties"]), served);
        let mut join = Event::new(EventKind::Join, "lobby", "bob", None, "gw").verified("Bob");
        join.name = None;
        let mut required: Vec<String> = serde_json::from_value(schema["required"].clone()).unwrap();
        required.sort_unstable();
        assert_eq!(required, sorted_keys(&serde_json::to_value(join).unwrap()));
        assert_eq!(
            schema["properties"]["type"]["enum"],
            Value::from(vec!["message", "join", "leave", "edit", "delete", "react"])
        );

        archived.stop().await;
    }
}

fn sorted_keys(object: &Value) -> Vec<String> {
    let mut keys: Vec<String> = object.as_object().unwrap().keys().cloned().collect();
    keys.sort_unstable();
    keys
}
