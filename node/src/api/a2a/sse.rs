//! Server-Sent Events read as their bytes arrive: an upstream A2A server's
//! streaming answer, split into events one network read at a time.

use serde_json::Value;

/// Why an SSE body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum SseError {
    /// An event's data is not JSON.
    #[error("bad SSE event: {0}")]
    NotJson(String),
    /// An event (or a line) is larger than the limit.
    #[error("SSE event over {0} bytes")]
    TooLarge(usize),
}

/// Splits an SSE body into the JSON `data` of its events, fed a piece at a
/// time. Lines end in CRLF, CR or LF (the SSE grammar), also when a piece
/// ends between the CR and the LF; an event ends at a blank line; comments
/// and fields other than `data` are skipped.
#[derive(Debug)]
pub(super) struct SseParser {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// The data lines of the event being read.
    data: Option<String>,
    /// Whether the last byte fed was a CR (a LF right after it ends no
    /// second line).
    after_cr: bool,
    /// Largest event (its data) and largest line.
    limit: usize,
}

impl SseParser {
    /// A parser refusing events larger than `limit` bytes.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            data: None,
            after_cr: false,
            limit,
        }
    }

    /// Feeds `bytes`; the events they complete are appended to `out`. After
    /// an error the parser must not be fed again.
    pub(super) fn push(&mut self, bytes: &[u8], out: &mut Vec<Value>) -> Result<(), SseError> {
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => self.end_line(out)?,
                _ => {
                    if self.line.len() >= self.limit {
                        return Err(SseError::TooLarge(self.limit));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    /// The body ended: a last line, and a last event, not ended by a blank
    /// line are taken as if they were.
    pub(super) fn finish(&mut self, out: &mut Vec<Value>) -> Result<(), SseError> {
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.dispatch(out)
    }

    fn end_line(&mut self, out: &mut Vec<Value>) -> Result<(), SseError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            return self.dispatch(out);
        }
        let Some(value) = line.strip_prefix(b"data") else {
            return Ok(());
        };
        let value = match value {
            [] => &[][..],
            [b':', b' ', rest @ ..] | [b':', rest @ ..] => rest,
            // A field named e.g. `database`.
            _ => return Ok(()),
        };
        let value = String::from_utf8_lossy(value);
        let data = match self.data.take() {
            // Data lines of one event are joined with a newline.
            Some(mut data) => {
                data.push('\n');
                data.push_str(&value);
                data
            }
            None => value.into_owned(),
        };
        if data.len() > self.limit {
            return Err(SseError::TooLarge(self.limit));
        }
        self.data = Some(data);
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<Value>) -> Result<(), SseError> {
        let Some(data) = self.data.take() else {
            return Ok(());
        };
        let v = serde_json::from_str(&data).map_err(|e| SseError::NotJson(e.to_string()))?;
        out.push(v);
        Ok(())
    }
}

/// The events of a whole SSE body.
pub(super) fn events(body: &[u8], limit: usize) -> Result<Vec<Value>, SseError> {
    let mut parser = SseParser::new(limit);
    let mut out = Vec::new();
    parser.push(body, &mut out)?;
    parser.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_split_on_any_line_ending() {
        let body = "data: {\"a\":1}\r\n\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\n: comment\n\ndata: {\"c\":3}\n\nevent: x\rdata:{\"d\":4}\r\r";
        assert_eq!(
            events(body.as_bytes(), 1024).unwrap(),
            vec![
                json!({"a": 1}),
                json!({"b": 2}),
                json!({"c": 3}),
                json!({"d": 4})
            ]
        );
    }

    #[test]
    fn events_come_out_as_their_bytes_arrive_in_any_pieces() {
        let body = b"data: {\"a\":1}\r\n\r\nid: 7\r\ndata: {\"b\":2}\r\n\r\ndata: {\"c\":3}";
        for cut in 1..body.len() {
            let mut parser = SseParser::new(1024);
            let mut out = Vec::new();
            parser.push(&body[..cut], &mut out).unwrap();
            let early = out.len();
            // No event before its blank line: the CR of the second CRLF
            // ends it (a CR alone ends a line).
            let first_end = body.windows(3).position(|w| w == b"\r\n\r").unwrap() + 3;
            assert_eq!(early > 0, cut >= first_end, "cut at {cut}");
            parser.push(&body[cut..], &mut out).unwrap();
            assert_eq!(out.len(), 2, "cut at {cut}");
            parser.finish(&mut out).unwrap();
            assert_eq!(out, vec![json!({"a": 1}), json!({"b": 2}), json!({"c": 3})]);
        }
    }

    #[test]
    fn a_cr_lf_split_between_pieces_ends_one_line() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.push(b"data: [1,\r", &mut out).unwrap();
        parser.push(b"\ndata: 2]\r", &mut out).unwrap();
        assert!(out.is_empty());
        // The LF after a CR ends no second line; the CR after it does.
        parser.push(b"\n\r", &mut out).unwrap();
        assert_eq!(out, vec![json!([1, 2])]);
        parser.push(b"\n", &mut out).unwrap();
        parser.finish(&mut out).unwrap();
        assert_eq!(out, vec![json!([1, 2])]);
    }

    #[test]
    fn oversized_and_bad_events_are_errors() {
        let big = format!("data: \"{}\"\n\n", "x".repeat(100));
        assert_eq!(
            events(big.as_bytes(), 64).unwrap_err(),
            SseError::TooLarge(64)
        );
        let mut parser = SseParser::new(64);
        let err = parser.push(&[b'x'; 65], &mut Vec::new()).unwrap_err();
        assert_eq!(err, SseError::TooLarge(64));
        assert!(matches!(
            events(b"data: nope\n\n", 64),
            Err(SseError::NotJson(_))
        ));
        // Fields other than data, and data-less events, are skipped.
        assert_eq!(
            events(b"database: 1\nevent: e\n\n:\n\n", 64).unwrap(),
            Vec::<Value>::new()
        );
    }
}
