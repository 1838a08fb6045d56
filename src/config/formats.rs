//! Checks for the string formats our schemas name (`maxions-duration`, `maxions-cron`, ...).

use std::str::FromStr;

use super::diagnostic::did_you_mean;
use super::task::{RepoRef, check_branch_name};
use super::units::{ByteSize, DURATION_HINT, HumanDuration, SIZE_HINT};

/// What is wrong with a formatted string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

fn problem(code: &'static str, message: String, hint: impl Into<Option<String>>) -> Problem {
    Problem {
        code,
        message,
        hint: hint.into(),
    }
}

/// Checks `text` against the named format. Unknown formats accept anything.
pub fn check(format: &str, text: &str) -> Result<(), Problem> {
    match format {
        "maxions-duration" => HumanDuration::from_str(text)
            .map(drop)
            .map_err(|m| problem("invalid-duration", m, DURATION_HINT.to_owned())),
        "maxions-size" => ByteSize::from_str(text)
            .map(drop)
            .map_err(|m| problem("invalid-size", m, SIZE_HINT.to_owned())),
        "maxions-cron" => check_cron(text),
        "maxions-timezone" => check_timezone(text),
        "maxions-host-pattern" => check_host_pattern(text),
        "maxions-identifier" => check_identifier(text),
        "maxions-env-name" => check_env_name(text),
        "maxions-engine-name" => check_name(text, "engine name", "invalid-engine-name"),
        "maxions-engine-label" => check_name(text, "engine label", "invalid-engine-label"),
        "maxions-docker-host" => check_docker_host(text),
        "maxions-repo" => RepoRef::parse(text).map(drop).map_err(|m| {
            problem(
                "invalid-repo",
                m,
                "write `owner/name` or a clone URL".to_owned(),
            )
        }),
        "maxions-branch" => check_branch_name(text).map_err(|m| problem("invalid-branch", m, None)),
        _ => Ok(()),
    }
}

/// A cron schedule: exactly five fields, or a nickname such as `@daily`.
pub fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    let fields = text.split_whitespace().count();
    if !text.trim_start().starts_with('@') && fields != 5 {
        return Err(format!(
            "invalid cron `{text}`: expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("invalid cron `{text}`: {}", lowercase_first(&e.to_string())))
}

fn check_cron(text: &str) -> Result<(), Problem> {
    parse_cron(text).map(drop).map_err(|m| {
        problem(
            "invalid-cron",
            m,
            "e.g. \"0 9 * * 1\" is every Monday at 09:00; fields are minute hour day-of-month month day-of-week".to_owned(),
        )
    })
}

fn check_timezone(text: &str) -> Result<(), Problem> {
    if text.parse::<chrono_tz::Tz>().is_ok() {
        return Ok(());
    }
    let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    let hint = match did_you_mean(text, names) {
        Some(best) => format!("did you mean `{best}`?"),
        None => "use an IANA time zone name such as `Europe/Berlin` or `UTC`".to_owned(),
    };
    Err(problem(
        "invalid-timezone",
        format!("unknown time zone `{text}`"),
        hint,
    ))
}

/// The egress proxy's own parser decides, so that `validate` accepts exactly what the proxy
/// enforces (ports included: `llm.example.com:8443`).
fn check_host_pattern(text: &str) -> Result<(), Problem> {
    match text.parse::<crate::sandbox::egress::HostPattern>() {
        Ok(_) => Ok(()),
        Err(error) => Err(problem(
            "invalid-host-pattern",
            error.to_string(),
            "write a host name (`github.com`), one leading wildcard label (`*.githubusercontent.com`), or either with a port (`llm.example.com:8443`)"
                .to_owned(),
        )),
    }
}

/// An engine's name or label: lower-case letters, digits, `-`, `_`, `.`, starting with a letter
/// or digit, at most 63 characters.
fn check_name(text: &str, what: &str, code: &'static str) -> Result<(), Problem> {
    let ok = text.len() <= 63
        && text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        return Ok(());
    }
    Err(problem(
        code,
        format!("`{text}` is not a valid {what}"),
        "use lower-case letters, digits, `-`, `_` and `.`, starting with a letter or digit (at most 63)".to_owned(),
    ))
}

/// Where a Docker engine listens, as maxions can reach it: `unix:///path` or `tcp://host:port`.
pub fn check_docker_host(text: &str) -> Result<(), Problem> {
    if let Some(path) = text.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(());
        }
        return Err(problem(
            "invalid-docker-host",
            format!("`{text}`: a Unix socket's path must be absolute"),
            "e.g. `unix:///var/run/docker.sock`".to_owned(),
        ));
    }
    if let Some(rest) = text.strip_prefix("tcp://") {
        let authority = rest.trim_end_matches('/');
        let port = authority
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port));
        if port.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
            && !authority.contains(['/', '@'])
        {
            return Ok(());
        }
        return Err(problem(
            "invalid-docker-host",
            format!("`{text}` is not `tcp://HOST:PORT`"),
            "e.g. `tcp://builder.example:2376` (2376 is Docker's TLS port)".to_owned(),
        ));
    }
    let hint = if text.starts_with("ssh://") {
        "maxions does not speak SSH to an engine: forward its socket (`ssh -nNT -L /run/maxions/b.sock:/var/run/docker.sock user@host`) and name the local end, `unix:///run/maxions/b.sock`"
    } else if text.starts_with("http://") || text.starts_with("https://") {
        "write `tcp://HOST:PORT`, with `tls` for the certificates"
    } else {
        "write `unix:///path/docker.sock` or `tcp://HOST:PORT`"
    };
    Err(problem(
        "invalid-docker-host",
        format!("`{text}` is not an engine address maxions can use"),
        hint.to_owned(),
    ))
}

fn check_identifier(text: &str) -> Result<(), Problem> {
    let mut chars = text.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        return Ok(());
    }
    Err(problem(
        "invalid-identifier",
        format!("`{text}` is not a valid id"),
        "use letters, digits, `_` and `-`, starting with a letter".to_owned(),
    ))
}

fn check_env_name(text: &str) -> Result<(), Problem> {
    let mut chars = text.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        return Ok(());
    }
    Err(problem(
        "invalid-name",
        format!("`{text}` is not a valid environment variable name"),
        "use letters, digits and `_`, starting with a letter, e.g. `GIT_TOKEN`".to_owned(),
    ))
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}
