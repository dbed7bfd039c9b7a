//! `GET /api/search`: words found in messages, newest first, within a room and a limit, and
//! user input that looks like FTS5 syntax taken as plain words.

use serde_json::Value;

use crate::helpers::{encode, ids, message, Archived};

on_both_backends! {
    async fn search_finds_a_message_by_a_word_within_the_room_and_limit_asked_for(backend) {
        let events = [
            message("lobby", "the quick brown fox"),
            message("lobby", "a lazy dog"),
            message("kitchen", "quick tea?"),
            message("lobby", "Quick, to the café!"),
        ];
        let archived = Archived::new(backend, "search", &events).await;
        let archiver = &archived.archiver;
        let id = |n: usize| events[n].id.clone();

        let (status, body) = archiver.get("/api/search?q=quick").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["query"], "quick");
        assert_eq!(ids(&body["events"]), [id(3), id(2), id(0)], "newest first");
        assert_eq!(body["events"][2], serde_json::to_value(&events[0]).unwrap());

        for (query, want) in [
            ("q=quick&room=lobby", vec![id(3), id(0)]),
            ("q=quick&limit=2", vec![id(3), id(2)]),
            ("q=quick&room=lobby&limit=1", vec![id(3)]),
            ("q=QUICK+fox", vec![id(0)]),
            ("q=fox+quick", vec![id(0)]),
            ("q=cafe", vec![id(3)]),
            ("q=dog&room=kitchen", vec![]),
            ("q=quick+cat", vec![]),
            ("q=nothing&room=nowhere", vec![]),
        ] {
            let (status, body) = archiver.get(&format!("/api/search?{query}")).await;
            assert_eq!((status, ids(&body["events"])), (200, want), "{query}");
        }
        let (_, body) = archiver.get("/api/search?q=%20quick%20%20fox%20").await;
        assert_eq!(body["query"], "quick fox");

        for (query, code) in [
            ("", "invalid_query"),
            ("q=", "invalid_query"),
            ("q=%20%09", "invalid_query"),
            ("q=%00", "invalid_query"),
            (&format!("q={}", ["w"; 33].join("+")), "invalid_query"),
            ("q=quick&colour=red", "invalid_query"),
            ("q=quick&room=", "invalid_room"),
            ("q=quick&room=no%20room", "invalid_room"),
            ("q=quick&limit=0", "invalid_limit"),
            ("q=quick&limit=201", "invalid_limit"),
            ("q=quick&limit=many", "invalid_limit"),
        ] {
            let (status, body) = archiver.get(&format!("/api/search?{query}")).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (400, Some(code)),
                "{query}: {body}"
            );
        }
        let (_, body) = archiver.get("/api/search?q=quick&limit=200").await;
        assert_eq!(ids(&body["events"]).len(), 3);

        archived.stop().await;
    }
}

on_both_backends! {
    async fn a_query_with_fts_syntax_characters_gets_results_or_an_empty_list_never_a_500(backend) {
        let tricky = message(
            "lobby",
            r#"say "hi" to a*b NEAR(x, y) -- key:value ^caret {col} AND"#,
        );
        let archived = Archived::new(backend, "search-syntax", &[tricky.clone(), message("lobby", "hi")]).await;
        let archiver = &archived.archiver;

        // Words that the message contains, however they are written, find it.
        for query in [
            r#""hi""#,
            r#"say "hi"#,
            "a*b",
            "NEAR(x,",
            "key:value",
            "-key",
            "^caret",
            "{col}",
            "AND",
            "hi -- ?",
        ] {
            let (status, body) = archiver
                .get(&format!("/api/search?q={}", encode(query)))
                .await;
            assert_eq!(status, 200, "{query}: {body}");
            assert!(
                ids(&body["events"]).contains(&tricky.id),
                "{query} did not find the message: {body}"
            );
        }
        // Anything else answers 200 with a list, possibly empty.
        for query in [
            "\"",
            "\"\"",
            "*",
            "a*",
            "NEAR(",
            "NEAR(x y, 2)",
            "-",
            ":",
            "text:hi",
            "room:lobby",
            "OR",
            "NOT hi",
            "(",
            ")",
            "+",
            "hi\u{0}there",
            "'; DROP TABLE events; --",
            "\u{202e}evil\u{2028}",
        ] {
            let (status, body) = archiver
                .get(&format!("/api/search?q={}", encode(query)))
                .await;
            assert_eq!(status, 200, "{query:?}: {body}");
            assert!(body["events"].is_array(), "{query:?}: {body}");
        }
        let (_, body) = archiver.get("/api/search?q=-").await;
        assert_eq!(
            body["events"],
            Value::Array(vec![]),
            "punctuation alone finds nothing"
        );
        let (_, rooms) = archiver.get("/api/rooms").await;
        assert_eq!(rooms["rooms"][0]["events"], 2, "the archive is intact");

        archived.stop().await;
    }
}
