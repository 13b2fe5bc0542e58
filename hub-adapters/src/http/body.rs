//! File downloads: which bytes an answer carries, and a body that resumes with `Range` from
//! the byte reached when the connection breaks.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use reqwest::{Response, StatusCode, Url};

use super::{backoff, header_text, ByteRange, Http, Missing};
use crate::{Download, HubError};

impl Http {
    /// GET a file's bytes from `offset` up to `end` (exclusive; `None`: to its end), as a body
    /// stream that resumes where it broke.
    pub(crate) async fn download(
        &self,
        url: Url,
        offset: u64,
        end: Option<u64>,
        subject: &str,
    ) -> Result<Download, HubError> {
        // Ask for the range's end, unless the hub cannot say the file's size in a bounded
        // answer: then ask for the rest, and stop reading at the end.
        let mut ask_end = end.is_some();
        let (resp, window) = loop {
            let range = (offset > 0 || ask_end).then_some(ByteRange {
                from: offset,
                to: end.filter(|_| ask_end),
            });
            let resp = self
                .execute(
                    &url,
                    range,
                    self.attempts,
                    Missing::Entry,
                    subject,
                    |r| async { Ok(r) },
                )
                .await?;
            let window = Window::of(&resp, offset, subject)?;
            if ask_end && !window.sized {
                ask_end = false;
                continue;
            }
            break (resp, window);
        };
        let size = window.size;
        let stop = end.map_or(size, |e| e.min(size));
        if offset > stop {
            return Err(HubError::Status {
                status: 416,
                message: format!("{subject}: bytes {offset}-{stop} are not a range"),
            });
        }
        let body = Body {
            http: self.clone(),
            url,
            subject: subject.to_owned(),
            size,
            end: stop,
            ask_end,
            pos: offset,
            skip: window.skip,
            stream: resp.bytes_stream().boxed(),
            failures: 0,
            done: offset == stop,
        };
        let body = stream::unfold(
            body,
            |mut b| async move { b.next().await.map(|item| (item, b)) },
        );
        Ok(Download {
            len: stop - offset,
            size,
            body: body.boxed(),
        })
    }
}

/// Which bytes of the file an answer carries.
struct Window {
    /// The whole file's size.
    size: u64,
    /// Bytes to drop from the start of the body (a `200` to a ranged request).
    skip: u64,
    /// The answer said the file's size (a `206` may say `*`; `size` is then where its range
    /// ends, the file's size only for a range asked to the end).
    sized: bool,
}

impl Window {
    fn of(resp: &Response, offset: u64, subject: &str) -> Result<Window, HubError> {
        let malformed = |what: &str| HubError::Malformed(format!("{subject}: {what}"));
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = header_text(resp.headers(), "content-range")
                    .ok_or_else(|| malformed("206 without Content-Range"))?;
                let (start, end, total) = parse_content_range(&range)
                    .ok_or_else(|| malformed(&format!("bad Content-Range {range:?}")))?;
                if start != offset {
                    return Err(malformed(&format!(
                        "asked for bytes from {offset}, got Content-Range {range:?}"
                    )));
                }
                Ok(Window {
                    size: total.unwrap_or(end + 1),
                    skip: 0,
                    sized: total.is_some(),
                })
            }
            StatusCode::OK => {
                let size = header_text(resp.headers(), "content-length")
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| malformed("no Content-Length"))?;
                if offset > size {
                    return Err(HubError::Status {
                        status: 416,
                        message: format!("{subject}: offset {offset} is past the end ({size})"),
                    });
                }
                Ok(Window {
                    size,
                    skip: offset,
                    sized: true,
                })
            }
            other => Err(malformed(&format!(
                "unexpected status {} for a file",
                other.as_u16()
            ))),
        }
    }
}

/// A download body that re-requests the rest of the file when the connection breaks.
struct Body {
    http: Http,
    /// The request URL (before redirects: signed CDN URLs expire).
    url: Url,
    subject: String,
    size: u64,
    /// Absolute offset of the byte after the last to yield (`size`, unless a range was asked).
    end: u64,
    /// Resumes name `end` (the hub says the file's size in a bounded answer).
    ask_end: bool,
    /// Absolute offset of the next byte to yield.
    pos: u64,
    skip: u64,
    stream: BoxStream<'static, reqwest::Result<Bytes>>,
    /// Resume attempts since the last byte arrived.
    failures: u32,
    done: bool,
}

impl Body {
    async fn next(&mut self) -> Option<Result<Bytes, HubError>> {
        if self.done {
            return None;
        }
        loop {
            let mut cause = match self.stream.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(chunk.len() as u64);
                        self.skip -= drop;
                        chunk = chunk.slice(drop as usize..);
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    // A hub that sent more than the range asked (it ignored the Range): the
                    // rest is not read.
                    if self.end < self.size && chunk.len() as u64 >= self.end - self.pos {
                        chunk.truncate((self.end - self.pos) as usize);
                        self.pos = self.end;
                        self.done = true;
                        return Some(Ok(chunk));
                    }
                    if chunk.len() as u64 > self.size - self.pos {
                        self.done = true;
                        return Some(Err(HubError::Malformed(format!(
                            "{}: the hub sent more than the {} bytes it announced",
                            self.subject, self.size
                        ))));
                    }
                    self.pos += chunk.len() as u64;
                    self.failures = 0;
                    return Some(Ok(chunk));
                }
                None if self.pos == self.end && self.skip == 0 => {
                    self.done = true;
                    return None;
                }
                None => HubError::Malformed(format!(
                    "{}: the body ended at byte {} of {}",
                    self.subject, self.pos, self.end
                )),
                Some(Err(e)) => self.http.transport_error(e),
            };
            // Resume from the byte reached, within the retry budget.
            loop {
                if self.failures >= self.http.attempts {
                    self.done = true;
                    return Some(Err(cause));
                }
                self.failures += 1;
                tracing::warn!(
                    pos = self.pos,
                    size = self.size,
                    attempt = self.failures,
                    error = %cause,
                    "{}: download interrupted, resuming",
                    self.subject
                );
                tokio::time::sleep(backoff(self.failures)).await;
                match self.reopen().await {
                    Ok(()) => break,
                    Err(e) if e.is_unavailable() => cause = e,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    async fn reopen(&mut self) -> Result<(), HubError> {
        let bounded = self.ask_end && self.end < self.size;
        let range = (self.pos > 0 || bounded).then_some(ByteRange {
            from: self.pos,
            to: bounded.then_some(self.end),
        });
        let resp = self
            .http
            .execute(
                &self.url,
                range,
                1,
                Missing::Entry,
                &self.subject,
                |r| async { Ok(r) },
            )
            .await?;
        let window = Window::of(&resp, self.pos, &self.subject)?;
        if bounded && !window.sized {
            return Err(HubError::Malformed(format!(
                "{}: a bounded answer no longer says the file's size",
                self.subject
            )));
        }
        if window.size != self.size {
            return Err(HubError::Malformed(format!(
                "{}: the file changed size while downloading ({} then {})",
                self.subject, self.size, window.size
            )));
        }
        self.skip = window.skip;
        self.stream = resp.bytes_stream().boxed();
        Ok(())
    }
}

/// `bytes start-end/total` (total may be `*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let (start, end) = (
        start.trim().parse::<u64>().ok()?,
        end.trim().parse::<u64>().ok()?,
    );
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some((start, end, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, 99, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        assert_eq!(parse_content_range("bytes 10-99/50"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
