//! The forge under faults: GitHub answering 500, 502, 429 with `Retry-After`, or its secondary
//! rate limit, on each route a pull request needs (token minting, the pull request list, create,
//! update). maxions tries again a bounded number of times, pausing as GitHub asks, ends with one
//! pull request, and when it gives up says what GitHub answered and what to do, never the token.

use std::time::Duration;

use maxions::config::RepoRef;
use maxions::forge::{Forge, ForgeError, GitHub, PullRequestSpec};
use maxions::secret::Secret;

use crate::support::github::{APP_ID, FakeGitHub, Fault, INSTALLATION, PULLS, Recorded, app_key};

const PAT: &str = "github_pat_11BBBBBBB0123456789abcdefghijkl";
const ACCESS_TOKENS: &str = "/app/installations/42/access_tokens";
const PULL_1: &str = "/repos/octo/hello/pulls/1";

fn hello() -> RepoRef {
    RepoRef::parse("octo/hello").unwrap()
}

fn spec(title: &str) -> PullRequestSpec {
    PullRequestSpec {
        head_branch: "maxions/faults".into(),
        base: "main".into(),
        title: title.into(),
        body: format!("body of {title}"),
        ..PullRequestSpec::default()
    }
}

fn app_forge(fake: &FakeGitHub) -> GitHub {
    GitHub::with_app(
        &fake.base_url(),
        APP_ID,
        INSTALLATION,
        &app_key().private_pem,
    )
    .unwrap()
}

fn pat_forge(fake: &FakeGitHub) -> GitHub {
    GitHub::with_token(&fake.base_url(), Secret::new("GITHUB_TOKEN", PAT).unwrap()).unwrap()
}

/// The routes a pull request goes through, as (name, method, path). Token minting is only
/// used with an App; the update route only when the pull request exists already.
const ROUTES: [(&str, &str, &str); 4] = [
    ("token minting", "POST", ACCESS_TOKENS),
    ("pull request list", "GET", PULLS),
    ("pull request create", "POST", PULLS),
    ("pull request update", "PATCH", PULL_1),
];

fn on_route<'a>(requests: &'a [Recorded], method: &str, path: &str) -> Vec<&'a Recorded> {
    requests
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .collect()
}

/// `fault` answers `times` requests in a row on each route in turn; the pull request must come
/// out right, after exactly `times` extra requests on that route, each at least `pause` after
/// the one before.
async fn survives(fault: &Fault, times: usize, pause: Duration) {
    for (name, method, path) in ROUTES {
        let context = format!("{} ×{times} on {name}", fault.status);
        let fake = FakeGitHub::standard(PAT);
        let forge = app_forge(&fake);
        if path == PULL_1 {
            forge
                .open_or_update_pull_request(&hello(), &spec("First"))
                .await
                .unwrap_or_else(|err| panic!("{context}: opening the pull request: {err}"));
        }
        let before = fake.requests().len();
        fake.fail(method, path, fault.clone().times(times));

        let outcome = forge
            .open_or_update_pull_request(&hello(), &spec("Add faults"))
            .await
            .unwrap_or_else(|err| panic!("{context}: {err}"));

        let pulls = fake.pulls();
        assert_eq!(pulls.len(), 1, "{context}: exactly one pull request");
        assert_eq!(pulls[0].title, "Add faults", "{context}");
        assert_eq!(outcome.number, pulls[0].number, "{context}");
        let requests = fake.requests().split_off(before);
        let hits = on_route(&requests, method, path);
        assert_eq!(
            hits.len(),
            times + 1,
            "{context}: one request per fault, then the one that worked: {:?}",
            requests
                .iter()
                .map(|r| format!("{} {} {}", r.method, r.path, r.status))
                .collect::<Vec<_>>()
        );
        for pair in hits.windows(2) {
            let waited = pair[1].at.duration_since(pair[0].at);
            assert!(
                waited >= pause,
                "{context}: waited {waited:?} between attempts, wanted at least {pause:?}"
            );
        }
        assert_eq!(
            on_route(&requests, "POST", PULLS).len(),
            match (method, path) {
                (_, PULL_1) => 0,
                ("POST", PULLS) => times + 1,
                _ => 1,
            },
            "{context}: a create is sent again only after a look found no pull request"
        );
    }
}

#[tokio::test]
async fn a_500_on_every_route_is_retried_with_backoff() {
    survives(&Fault::server_error(500), 2, Duration::from_millis(150)).await;
}

#[tokio::test]
async fn a_502_on_every_route_is_retried_with_backoff() {
    survives(&Fault::server_error(502), 2, Duration::from_millis(150)).await;
}

#[tokio::test]
async fn a_429_on_every_route_waits_the_retry_after_github_names() {
    survives(&Fault::too_many_requests(), 1, Duration::from_millis(950)).await;
}

#[tokio::test]
async fn a_secondary_rate_limit_on_every_route_waits_and_tries_again() {
    survives(
        &Fault::secondary_rate_limit(),
        1,
        Duration::from_millis(950),
    )
    .await;
}

/// Asserts the final error after persistent `fault`s on `route`: what GitHub answered, what to
/// do, how often maxions tried, no token, and no pull request.
async fn gives_up(fault: Fault, method: &str, path: &str, attempts: usize, says: &[&str]) {
    let status = fault.status;
    let context = format!("{status} on {method} {path}");
    let fake = FakeGitHub::standard(PAT);
    let forge = app_forge(&fake);
    fake.fail(method, path, fault.times(100));

    let err = forge
        .open_or_update_pull_request(&hello(), &spec("Add faults"))
        .await
        .expect_err(&context);

    let text = err.to_string();
    for needle in says {
        assert!(
            text.contains(needle),
            "{context}: `{needle}` missing in: {text}"
        );
    }
    assert_eq!(err.status(), Some(status), "{context}");
    for minted in fake.minted_tokens() {
        assert!(
            !text.contains(&minted.token),
            "{context}: the token leaked: {text}"
        );
    }
    assert!(!text.contains(PAT), "{context}");
    assert_eq!(fake.count(method, path), attempts, "{context}: {text}");
    assert!(fake.pulls().is_empty(), "{context}");
}

#[tokio::test]
async fn a_lasting_server_error_ends_with_what_github_answered_and_what_to_do() {
    let err_says = [
        "502",
        "opening a pull request from `maxions/faults`",
        "run again later",
        "tried 4 times",
    ];
    gives_up(Fault::server_error(502), "POST", PULLS, 4, &err_says).await;
    let mint_says = ["500", "minting an installation token", "tried 4 times"];
    gives_up(
        Fault::server_error(500),
        "POST",
        ACCESS_TOKENS,
        4,
        &mint_says,
    )
    .await;
}

#[tokio::test]
async fn a_lasting_secondary_rate_limit_gives_up_after_a_few_waits() {
    let says = [
        "403",
        "secondary rate limit",
        "looking for the open pull request",
        "lower `concurrency`",
        "tried 4 times",
    ];
    gives_up(Fault::secondary_rate_limit(), "GET", PULLS, 4, &says).await;
}

#[tokio::test]
async fn a_retry_after_longer_than_maxions_waits_is_reported_at_once() {
    let fake = FakeGitHub::standard(PAT);
    let forge = pat_forge(&fake);
    fake.fail(
        "GET",
        PULLS,
        Fault::too_many_requests()
            .times(5)
            .header("Retry-After", "3600"),
    );
    let started = std::time::Instant::now();

    let err = forge
        .open_or_update_pull_request(&hello(), &spec("Add faults"))
        .await
        .unwrap_err();

    assert!(
        matches!(
            err,
            ForgeError::WaitTooLong {
                wait_secs: 3600,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("wait 3600 s") && text.contains("429"),
        "{text}"
    );
    assert!(text.contains("run the task again after that"), "{text}");
    assert!(!text.contains(PAT), "{text}");
    assert_eq!(fake.count("GET", PULLS), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let fake = FakeGitHub::standard(PAT);
    let forge = pat_forge(&fake);
    fake.fail(
        "POST",
        PULLS,
        Fault {
            status: 403,
            headers: Vec::new(),
            body: serde_json::json!({ "message": "Resource not accessible by integration" }),
            times: 5,
            after_handling: false,
        },
    );

    let err = forge
        .open_or_update_pull_request(&hello(), &spec("Add faults"))
        .await
        .unwrap_err();

    assert!(matches!(err, ForgeError::Forbidden { .. }), "{err:?}");
    assert_eq!(fake.count("POST", PULLS), 1);
}

/// The dangerous case: GitHub opened the pull request but its answer was lost (a 502 from a
/// proxy after the fact). Sending the `POST` again would be refused by GitHub's one-open-pull-
/// request-per-head rule at best; maxions looks first and updates the one that exists.
#[tokio::test]
async fn a_create_whose_answer_is_lost_leaves_one_pull_request() {
    for fault in [
        Fault::server_error(502),
        Fault::too_many_requests(),
        Fault::secondary_rate_limit(),
    ] {
        let status = fault.status;
        let fake = FakeGitHub::standard(PAT);
        let forge = pat_forge(&fake);
        fake.fail("POST", PULLS, fault.after_handling());

        let outcome = forge
            .open_or_update_pull_request(&hello(), &spec("Add faults"))
            .await
            .unwrap_or_else(|err| panic!("{status}: {err}"));

        assert_eq!(fake.pulls().len(), 1, "{status}: exactly one pull request");
        assert_eq!(outcome.number, fake.pulls()[0].number);
        assert_eq!(
            fake.count("POST", PULLS),
            1,
            "{status}: the create is not sent twice"
        );
        assert_eq!(
            fake.count("PATCH", PULL_1),
            1,
            "{status}: the found one is updated"
        );
    }
}
