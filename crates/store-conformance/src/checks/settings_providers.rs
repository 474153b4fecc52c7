//! Settings (JSON per namespace and key) and provider configurations (JSON per name).

use confab_domain::DomainError;
use serde_json::json;

use crate::Backend;
use crate::fixture::*;

/// A setting is kept per (namespace, key), replaced by the next put, listed by key within its namespace
/// only, and deleted (`true` when it existed).
pub async fn settings_are_kept_per_namespace<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    assert_eq!(s.get_setting("a", "k").await.unwrap(), None);
    s.put_setting("a", "k", json!({"x": 1})).await.unwrap();
    s.put_setting("b", "k", json!("other")).await.unwrap();
    s.put_setting("a", "k", json!({"x": 2})).await.unwrap();
    s.put_setting("a", "j", json!([1, "two", null])).await.unwrap();
    assert_eq!(s.get_setting("a", "k").await.unwrap(), Some(json!({"x": 2})));
    assert_eq!(s.get_setting("b", "k").await.unwrap(), Some(json!("other")));
    assert_eq!(s.get_setting("a", "missing").await.unwrap(), None);
    assert_eq!(
        s.list_settings("a").await.unwrap(),
        [
            ("j".to_string(), json!([1, "two", null])),
            ("k".to_string(), json!({"x": 2}))
        ]
    );
    assert_eq!(s.list_settings("b").await.unwrap(), [("k".to_string(), json!("other"))]);
    assert!(s.list_settings("c").await.unwrap().is_empty());
    assert!(s.delete_setting("b", "k").await.unwrap());
    assert!(!s.delete_setting("b", "k").await.unwrap());
    assert_eq!(s.get_setting("b", "k").await.unwrap(), None);
    assert!(s.list_settings("b").await.unwrap().is_empty());
    assert_eq!(s.get_setting("a", "k").await.unwrap(), Some(json!({"x": 2})));
}

/// A provider configuration is replaced by a put of the same name; providers list by name; deleting an
/// unknown one is `NotFound`.
pub async fn providers_are_replaced_by_name<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    assert!(s.list_providers().await.unwrap().is_empty());
    s.put_provider("p2", json!({"kind": "openai", "key_env": "P2_KEY"}))
        .await
        .unwrap();
    s.put_provider("p1", json!({"kind": "anthropic"})).await.unwrap();
    s.put_provider("p2", json!({"kind": "openai", "model": "m"}))
        .await
        .unwrap();
    assert_eq!(
        s.list_providers().await.unwrap(),
        [
            ("p1".to_string(), json!({"kind": "anthropic"})),
            ("p2".to_string(), json!({"kind": "openai", "model": "m"})),
        ]
    );
    s.delete_provider("p1").await.unwrap();
    assert_eq!(
        s.list_providers().await.unwrap(),
        [("p2".to_string(), json!({"kind": "openai", "model": "m"}))]
    );
    assert_err!(
        s.delete_provider("p1").await,
        DomainError::NotFound { entity: "provider", .. }
    );
}

/// Acknowledged settings and providers are there after the store is opened again; deleted ones are not.
pub async fn settings_and_providers_survive_reopen<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    s.put_setting("a", "k", json!({"x": 1})).await.unwrap();
    s.put_setting("b", "k", json!("other")).await.unwrap();
    s.put_setting("a", "k", json!({"x": 2})).await.unwrap();
    assert!(s.delete_setting("b", "k").await.unwrap());
    s.put_provider("p", json!({"kind": "openai"})).await.unwrap();

    let env = env.reopen().await;
    let s = &env.store;
    assert_eq!(s.get_setting("a", "k").await.unwrap(), Some(json!({"x": 2})));
    assert_eq!(s.get_setting("b", "k").await.unwrap(), None);
    assert_eq!(
        s.list_providers().await.unwrap(),
        [("p".to_string(), json!({"kind": "openai"}))]
    );
}
