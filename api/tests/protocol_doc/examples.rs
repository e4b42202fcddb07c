//! Reads the captured HTTP exchanges and WebSocket transcripts out of `docs/protocol.md`.
//!
//! Both sit in fenced blocks without a language. An exchange reads:
//!
//! ```text
//! METHOD /path?query          (note)
//! {"optional":"request body"}
//! 201 Created                 (note)
//! header-name: value
//! {"optional":"response body"}
//! ```
//!
//! A transcript is a block of frames, each on a line of its own, sent (`>`, `→`) or received
//! (`<`, `←`), after the name of the socket's user where there are several:
//!
//! ```text
//! alice > {"op":"ping","ref":1}       (note)
//! alice < {"op":"pong","ref":1}
//! ```

/// One captured exchange.
#[derive(Clone, Debug)]
pub struct Example {
    /// The line of the request in the document, for failure reports.
    pub line: usize,
    /// The `###` heading above it, or the `##` one where there is none.
    pub heading: String,
    /// Which fenced block of the document holds it, counted from 0.
    pub block: usize,
    pub method: String,
    pub target: String,
    /// What the parenthesised note after the request says (who asks, how, on which server).
    pub note: String,
    pub body: Option<String>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub response: Option<String>,
}

impl Example {
    /// How the document names it: its request line and note.
    pub fn name(&self) -> String {
        match self.note.is_empty() {
            true => format!("{} {}", self.method, self.target),
            false => format!("{} {} ({})", self.method, self.target, self.note),
        }
    }
}

/// A WebSocket transcript.
#[derive(Clone, Debug)]
pub struct Transcript {
    /// The line of its first frame in the document.
    pub line: usize,
    pub heading: String,
    pub frames: Vec<Frame>,
    /// Lines of the block that are not frames (commentary, an HTTP request between frames).
    pub other_lines: usize,
}

impl Transcript {
    /// How the replay names it: its heading and the start of its first frame.
    pub fn name(&self) -> String {
        let first = self.frames.first().map_or("", |f| f.text.as_str());
        let start: String = first.chars().take(48).collect();
        format!("{}: {start}", self.heading)
    }
}

/// One frame of a transcript.
#[derive(Clone, Debug)]
pub struct Frame {
    pub user: Option<String>,
    pub sent: bool,
    pub text: String,
    pub note: String,
}

fn frame_line(line: &str) -> Option<Frame> {
    let (user, rest) = match line.split_once(' ') {
        Some((word, rest)) if word.chars().all(|c| c.is_ascii_lowercase()) && !word.is_empty() => {
            (Some(word.to_owned()), rest.trim_start())
        }
        _ => (None, line),
    };
    let (direction, text) = rest.split_once(' ')?;
    let sent = match direction {
        ">" | "→" => true,
        "<" | "←" => false,
        _ => return None,
    };
    let (text, note) = with_note(text);
    Some(Frame { user, sent, text: text.to_owned(), note: note.to_owned() })
}

/// Every transcript of the document, in document order.
pub fn transcripts(document: &str) -> Vec<Transcript> {
    let mut transcripts = Vec::new();
    let mut heading = String::new();
    let mut in_block = false;
    let mut current: Option<Transcript> = None;
    for (i, line) in document.lines().enumerate() {
        if let Some(fence) = line.strip_prefix("```") {
            if in_block {
                transcripts.extend(current.take().filter(|block| !block.frames.is_empty()));
            } else if fence.trim().is_empty() {
                let heading = heading.clone();
                current = Some(Transcript { line: 0, heading, frames: Vec::new(), other_lines: 0 });
            }
            in_block = !in_block;
            continue;
        }
        if !in_block {
            if let Some(title) = line.strip_prefix("### ").or_else(|| line.strip_prefix("## ")) {
                heading = title.to_owned();
            }
            continue;
        }
        let Some(block) = current.as_mut() else { continue };
        match frame_line(line) {
            Some(frame) => {
                if block.frames.is_empty() {
                    block.line = i + 1;
                }
                block.frames.push(frame);
            }
            None if line.trim().is_empty() => {}
            None => block.other_lines += 1,
        }
    }
    transcripts
}

/// The lines of the `json` blocks under `heading` that are whole JSON values: frames the
/// document shows as captured, apart from any exchange.
pub fn captured_frames(document: &str, heading: &str) -> Vec<(usize, String)> {
    let mut frames = Vec::new();
    let mut current = String::new();
    let mut in_json = false;
    for (i, line) in document.lines().enumerate() {
        if let Some(title) = line.strip_prefix("### ").or_else(|| line.strip_prefix("## ")) {
            current = title.to_owned();
        } else if line.starts_with("```") {
            in_json = line == "```json" && current == heading;
        } else if in_json && serde_json::from_str::<serde_json::Value>(line).is_ok() {
            frames.push((i + 1, line.to_owned()));
        }
    }
    frames
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// Splits `text (note)` into the text and the note.
fn with_note(line: &str) -> (&str, &str) {
    let line = line.trim_end();
    if line.ends_with(')')
        && let Some(open) = line.find("  (").or_else(|| line.find(" ("))
    {
        return (
            line[..open].trim_end(),
            line[open..].trim().trim_start_matches('(').trim_end_matches(')'),
        );
    }
    (line, "")
}

fn request_line(line: &str) -> Option<(String, String, String)> {
    let (method, rest) = line.split_once(' ')?;
    if !METHODS.contains(&method) || !rest.starts_with('/') {
        return None;
    }
    let (target, note) = with_note(rest);
    (!target.contains(' ')).then(|| (method.to_owned(), target.to_owned(), note.to_owned()))
}

fn status_line(line: &str) -> Option<u16> {
    let (code, _) = line.split_once(' ')?;
    code.parse().ok().filter(|s| (100..600).contains(s))
}

fn header_line(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(": ")?;
    let is_name = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    is_name.then(|| (name.to_owned(), value.to_owned()))
}

fn is_json_body(line: &str) -> bool {
    line.starts_with('{') || line.starts_with('[')
}

/// Every exchange of the document, in document order.
pub fn parse(document: &str) -> Vec<Example> {
    let lines: Vec<&str> = document.lines().collect();
    let mut examples = Vec::new();
    let mut heading = String::new();
    let mut in_block = false;
    let mut plain_block = false;
    let mut blocks = 0;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if let Some(fence) = line.strip_prefix("```") {
            plain_block = !in_block && fence.trim().is_empty();
            in_block = !in_block;
            blocks += usize::from(in_block);
            continue;
        }
        if !in_block {
            if let Some(title) = line.strip_prefix("### ").or_else(|| line.strip_prefix("## ")) {
                heading = title.to_owned();
            }
            continue;
        }
        let Some((method, target, note)) = plain_block.then(|| request_line(line)).flatten() else {
            continue;
        };
        let line_number = i;
        let body = lines.get(i).filter(|l| is_json_body(l)).map(|l| with_note(l).0.to_owned());
        i += usize::from(body.is_some());
        // A request line without a status after it is a template, not an exchange.
        let Some(status) = lines.get(i).and_then(|l| status_line(l)) else {
            continue;
        };
        i += 1;
        let mut headers = Vec::new();
        while let Some(header) = lines.get(i).and_then(|l| header_line(l)) {
            headers.push(header);
            i += 1;
        }
        let response = lines.get(i).filter(|l| is_json_body(l)).map(|l| l.to_string());
        i += usize::from(response.is_some());
        examples.push(Example {
            line: line_number,
            heading: heading.clone(),
            block: blocks - 1,
            method,
            target,
            note,
            body,
            status,
            headers,
            response,
        });
    }
    examples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_notes_statuses_headers_and_bodies() {
        let document = "## Things\n\n```\nPUT /v1/things     (as bob)\n{\"a\":1}\n405 Method Not Allowed\nallow: GET\n{\"error\":{}}\n\nGET /v1/ws?token=T\n```\n";
        let examples = parse(document);
        assert_eq!(examples.len(), 1);
        let example = &examples[0];
        assert_eq!((example.method.as_str(), example.target.as_str()), ("PUT", "/v1/things"));
        assert_eq!(example.note, "as bob");
        assert_eq!(example.body.as_deref(), Some("{\"a\":1}"));
        assert_eq!(example.status, 405);
        assert_eq!(example.headers, [("allow".to_owned(), "GET".to_owned())]);
        assert_eq!(example.response.as_deref(), Some("{\"error\":{}}"));
        assert_eq!(example.heading, "Things");
    }

    #[test]
    fn reads_frames_with_their_users_and_notes() {
        let document =
            "### Talk\n\n```\nalice > {\"op\":\"ping\"}     (twice)\n< pong\n# a comment\n```\n";
        let transcripts = transcripts(document);
        assert_eq!(transcripts.len(), 1);
        let transcript = &transcripts[0];
        assert_eq!((transcript.heading.as_str(), transcript.other_lines), ("Talk", 1));
        let frames: Vec<(Option<&str>, bool, &str, &str)> = transcript
            .frames
            .iter()
            .map(|f| (f.user.as_deref(), f.sent, f.text.as_str(), f.note.as_str()))
            .collect();
        assert_eq!(
            frames,
            [(Some("alice"), true, "{\"op\":\"ping\"}", "twice"), (None, false, "pong", "")]
        );
    }
}
