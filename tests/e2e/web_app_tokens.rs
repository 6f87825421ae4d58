//! The web app's own access tokens open the api and the gateway unchanged, given its secret
//! and its token settings (user claim `userId`, issuer, audience).

use std::time::Duration;

use cellport_http::TokenRules;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::archive::read_zip;
use crate::support::{Stack, StackOptions, tiny};

/// A user id as the web app makes them (UUID text).
const WEB_USER: &str = "c0a8012e-7d3b-4f0e-9a61-5b2f8e4d9c17";

fn web_app_rules() -> TokenRules {
    TokenRules {
        user_claim: "userId".into(),
        issuer: Some("cell-segmentation-api".into()),
        audience: Some("cell-segmentation-app".into()),
    }
}

/// An access token made as the web app makes it: its payload, its issuer and audience, a
/// 15-minute expiry and no `sub`, signed with the shared secret; `change` alters the claims.
fn web_app_token(change: impl FnOnce(&mut Map<String, Value>)) -> String {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let Value::Object(mut claims) = json!({
        "userId": WEB_USER,
        "email": "ada@example.org",
        "emailVerified": true,
        "iat": now,
        "exp": now + 900,
        "iss": "cell-segmentation-api",
        "aud": "cell-segmentation-app",
    }) else {
        unreachable!("an object literal")
    };
    change(&mut claims);
    let secret = cellport_testkit::jwt_secret();
    let key = EncodingKey::from_secret(secret.expose().as_bytes()).expect("a non-empty secret");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("HS256 signs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_app_token_drives_a_whole_export() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        token_rules: web_app_rules(),
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic(WEB_USER, tiny(3)).await?;
    let token = web_app_token(|_| {});
    let mut events = stack.ws_with_token(stack.gateway, &token).await?;

    let export_url = stack.url(&format!("/api/projects/{}/export", project.id));
    let options = json!({"annotationFormats": ["coco"], "metricsFormats": ["csv"]});
    let start = |body: Value| {
        stack
            .http
            .post(&export_url)
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    // The body the web app's dialog sends; an api that does not take `projectName` yet gets
    // the same options in the shape it takes.
    let mut response = start(json!({"options": options, "projectName": project.name})).await?;
    if response.status() == StatusCode::UNPROCESSABLE_ENTITY {
        response = start(json!({ "options": options })).await?;
    }
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await?;
    let job = accepted["jobId"].as_str().unwrap().to_owned();

    let frames = events
        .frames_within(Duration::from_secs(60), |frames| {
            frames
                .iter()
                .any(|f| f["event"] == "export:completed" || f["event"] == "export:failed")
        })
        .await;
    let names: Vec<&str> = frames.iter().filter_map(|f| f["event"].as_str()).collect();
    assert_eq!(names.first(), Some(&"export:started"), "{names:?}");
    assert!(names.contains(&"export:completed"), "{names:?}");
    for frame in &frames {
        assert_eq!(frame["data"]["jobId"], job.as_str(), "{frame}");
        assert_eq!(frame["data"]["userId"], WEB_USER, "{frame}");
    }
    let completed = &frames
        .iter()
        .find(|f| f["event"] == "export:completed")
        .unwrap()["data"];

    let download = stack
        .http
        .get(stack.url(completed["downloadUrl"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(download.status(), StatusCode::OK);
    let entries = read_zip(download.bytes().await?.to_vec()).await?;
    for name in ["annotations/coco/annotations.json", "metrics/metrics.csv"] {
        assert!(entries.contains_key(name), "{name} in {:?}", entries.keys());
    }

    // The signed download link Cellport mints for a browser follows the same rules.
    let signed: Value = stack
        .http
        .post(stack.url(&format!(
            "/api/projects/{}/export/{job}/download-token",
            project.id
        )))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let by_link = stack
        .http
        .get(stack.url(signed["url"].as_str().unwrap()))
        .send()
        .await?;
    assert_eq!(by_link.status(), StatusCode::OK);
    assert_eq!(
        read_zip(by_link.bytes().await?.to_vec()).await?.len(),
        entries.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_breaks_the_web_apps_rules_is_refused_with_the_claim() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        token_rules: web_app_rules(),
        ..StackOptions::default()
    })
    .await?;
    let refusals = [
        (
            web_app_token(|c| drop(c.remove("userId"))),
            "no userId claim holding the user id",
        ),
        (
            web_app_token(|c| drop(c.insert("iss".into(), json!("someone-else")))),
            "the iss claim is not cell-segmentation-api",
        ),
        (
            web_app_token(|c| drop(c.insert("aud".into(), json!("another-app")))),
            "the aud claim does not name cell-segmentation-app",
        ),
    ];
    for (token, reason) in &refusals {
        let response = stack
            .http
            .get(stack.url("/api/projects"))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{reason}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["code"], "invalid_token", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");

        let upgrade = stack
            .ws_with_token(stack.gateway, token)
            .await
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            upgrade.as_deref().is_some_and(|e| e.contains("401")),
            "{reason}: {upgrade:?}"
        );
    }
    // The same user's token, made well, opens both.
    let token = web_app_token(|_| {});
    let projects = stack
        .http
        .get(stack.url("/api/projects"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(projects.status(), StatusCode::OK);
    stack.ws_with_token(stack.gateway, &token).await?;
    Ok(())
}
