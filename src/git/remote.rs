//! A remote repository's URL, checked once: which transport it needs and where its mirror lives
//! below the state dir. Only `https://`, `http://` and `file:///` are accepted, and never with
//! credentials in the URL (they would reach git's command line and its messages).

use std::path::PathBuf;

use super::command::Transport;
use super::error::GitError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remote {
    pub url: String,
    pub transport: Transport,
    /// The mirror's path below `<state>/mirrors/`, e.g. `github.com/octo/hello.git`.
    pub mirror: PathBuf,
}

impl Remote {
    pub fn parse(url: &str) -> Result<Self, GitError> {
        let unsupported = |reason| GitError::UnsupportedUrl {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| unsupported("use an https://, http:// or file:/// URL"))?;
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(unsupported("it holds whitespace or control characters"));
        }
        if rest.contains(['?', '#']) {
            return Err(unsupported("it has a query or fragment"));
        }
        let (transport, authority, path) = match scheme.to_ascii_lowercase().as_str() {
            "https" | "http" => {
                let transport = if scheme.eq_ignore_ascii_case("https") {
                    Transport::Https
                } else {
                    Transport::Http
                };
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                if let Some((_, host)) = authority.rsplit_once('@') {
                    return Err(GitError::UnsupportedUrl {
                        // The user info may be a token: it never reaches a message.
                        url: format!("{scheme}://***@{host}/{path}"),
                        reason: "it holds credentials; maxions sends the forge's token itself",
                    });
                }
                if authority.is_empty() {
                    return Err(unsupported("it names no host"));
                }
                (transport, authority.to_ascii_lowercase(), path)
            }
            "file" => {
                let path = rest.strip_prefix('/').ok_or_else(|| {
                    unsupported("a file URL names an absolute local path: file:///path/repo.git")
                })?;
                (Transport::File, "file".to_owned(), path)
            }
            _ => return Err(unsupported("use an https://, http:// or file:/// URL")),
        };
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let Some((last, parents)) = segments.split_last() else {
            return Err(unsupported("it names no repository path"));
        };
        let mut mirror = PathBuf::from(escape(&authority, false));
        for segment in parents {
            mirror.push(escape(segment, true));
        }
        mirror.push(format!("{}.git", escape(last, false)));
        Ok(Self {
            url: url.to_owned(),
            transport,
            mirror,
        })
    }
}

/// One path segment, escaped so that the mapping is injective and stays below the mirrors
/// directory: bytes other than `[A-Za-z0-9_.-]` (and `%` itself) become `%XX`; a leading dot is
/// escaped (no `.`, `..` or hidden names), and so is the dot of a `.git` suffix on a directory
/// that is not a mirror (no mirror nests inside another).
fn escape(segment: &str, parent: bool) -> String {
    let mut out = String::new();
    let bytes = segment.as_bytes();
    let git_suffix = parent && segment.ends_with(".git");
    for (i, &b) in bytes.iter().enumerate() {
        let dot_escaped = b == b'.' && (i == 0 || (git_suffix && i == bytes.len() - 4));
        if (b.is_ascii_alphanumeric() || b"_.-".contains(&b)) && !dot_escaped {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(url: &str) -> String {
        Remote::parse(url).unwrap().mirror.display().to_string()
    }

    #[test]
    fn mirror_paths_follow_host_and_path() {
        assert_eq!(
            mirror("https://github.com/octo/hello.git"),
            "github.com/octo/hello.git"
        );
        assert_eq!(
            mirror("https://GitHub.com/octo/hello/"),
            "github.com/octo/hello.git"
        );
        assert_eq!(
            mirror("http://127.0.0.1:8080/octo/hello.git"),
            "127.0.0.1%3A8080/octo/hello.git"
        );
        assert_eq!(mirror("file:///srv/git/demo.git"), "file/srv/git/demo.git");
    }

    #[test]
    fn mirror_paths_cannot_escape_collide_or_nest() {
        assert_eq!(
            mirror("file:///srv/../../etc/x"),
            "file/srv/%2E./%2E./etc/x.git"
        );
        assert_eq!(mirror("https://h/a%2Fb"), "h/a%252Fb.git");
        assert_ne!(mirror("https://h/a~b"), mirror("https://h/a_b"));
        assert_ne!(mirror("https://h/a%7Eb"), mirror("https://h/a~b"));
        assert_eq!(mirror("https://h/x.git/objects"), "h/x%2Egit/objects.git");
        assert_eq!(mirror("https://h/.hidden"), "h/%2Ehidden.git");
    }

    #[test]
    fn transports_are_chosen_by_scheme() {
        assert_eq!(
            Remote::parse("https://h/r").unwrap().transport,
            Transport::Https
        );
        assert_eq!(
            Remote::parse("http://h/r").unwrap().transport,
            Transport::Http
        );
        assert_eq!(
            Remote::parse("file:///r").unwrap().transport,
            Transport::File
        );
    }

    #[test]
    fn refuses_other_schemes_credentials_and_odd_urls() {
        for bad in [
            "git@github.com:octo/hello.git",
            "ssh://git@github.com/octo/hello.git",
            "ext::sh -c evil",
            "https://x-access-token:ghs_secret@github.com/octo/hello.git",
            "https://github.com/octo/hello.git?x=1",
            "https:///octo/hello",
            "https://github.com/",
            "file://host/srv/repo",
            "https://github.com/octo/hello\n.git",
            "/srv/repo.git",
        ] {
            let err = Remote::parse(bad).unwrap_err();
            assert!(
                matches!(err, GitError::UnsupportedUrl { .. }),
                "{bad}: {err}"
            );
        }
        let err = Remote::parse("https://u:ghs_secret@github.com/o/r").unwrap_err();
        assert!(err.to_string().contains("holds credentials"), "{err}");
        assert!(!err.to_string().contains("ghs_secret"), "{err}");
    }
}
