//! One line for an error and what caused it, for messages that cross a library's layers
//! (bollard, octocrab and hyper wrap the root cause several times over).

/// `outer: inner: innermost`, leaving out a layer whose text an earlier one already says.
#[must_use]
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}
