use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Feeds `bytes` in pieces of `step` bytes; returns the verdicts and the
/// scanner.
fn scan(bytes: &[u8], step: usize) -> (Arc<Verdicts>, Scanner) {
    let verdicts = Arc::new(Verdicts::default());
    let mut scanner = Scanner::new(verdicts.clone());
    for piece in bytes.chunks(step.max(1)) {
        scanner.feed(piece);
    }
    (verdicts, scanner)
}

/// The first refused request's number and why, fed in one piece and in
/// every split into two and in single bytes: all must agree.
fn first_refused(bytes: &[u8]) -> Option<(u64, HeadError)> {
    let (verdicts, _) = scan(bytes, bytes.len());
    let whole = verdicts.refused.get().cloned();
    let (bytewise, _) = scan(bytes, 1);
    assert_eq!(bytewise.refused.get(), whole.as_ref(), "byte by byte");
    for split in 1..bytes.len() {
        let verdicts = Arc::new(Verdicts::default());
        let mut scanner = Scanner::new(verdicts.clone());
        scanner.feed(&bytes[..split]);
        scanner.feed(&bytes[split..]);
        assert_eq!(verdicts.refused.get(), whole.as_ref(), "split at {split}");
    }
    whole
}

const GET: &str = "GET /a HTTP/1.1\r\nHost: api\r\n\r\n";

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    let request = "POST /a HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\
                   Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(
        first_refused(request.as_bytes()),
        Some((0, HeadError::ContentLengthWithTransferEncoding))
    );
    // In the other order, and with the coding in another case.
    let request = "POST /a HTTP/1.1\r\nHost: api\r\ntransfer-encoding: CHUNKED\r\n\
                   content-length: 5\r\n\r\n0\r\n\r\n";
    assert_eq!(
        first_refused(request.as_bytes()),
        Some((0, HeadError::ContentLengthWithTransferEncoding))
    );
}

#[test]
fn repeated_content_length_is_refused_even_when_equal() {
    let request = "POST /a HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n\
                   Content-Length: 4\r\n\r\nabcd";
    assert_eq!(
        first_refused(request.as_bytes()),
        Some((0, HeadError::MultipleContentLength))
    );
}

#[test]
fn well_framed_requests_pass_and_are_counted() {
    let stream = format!(
        "{GET}POST /b HTTP/1.1\r\nHost: api\r\nContent-Length: 11\r\n\r\nhello world\
         POST /c HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\nx-trailer: 1\r\n\r\n{GET}"
    );
    assert_eq!(first_refused(stream.as_bytes()), None);
    let (_, scanner) = scan(stream.as_bytes(), 7);
    assert_eq!(scanner.heads, 4);
    assert!(scanner.is_following());
}

#[test]
fn a_bad_head_after_good_ones_refuses_from_its_number_on() {
    let bad = "POST /x HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\
               Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let stream = format!("{GET}{GET}{bad}{GET}");
    assert_eq!(
        first_refused(stream.as_bytes()),
        Some((2, HeadError::ContentLengthWithTransferEncoding))
    );
    let (verdicts, _) = scan(stream.as_bytes(), stream.len());
    assert!(verdicts.refused(1).is_none());
    assert!(verdicts.refused(2).is_some());
    assert!(verdicts.refused(3).is_some(), "and every request after it");
}

#[test]
fn heads_inside_bodies_are_not_heads() {
    // A body that carries what looks like a bad head is data, by length and
    // by chunks; the request after it is counted as the next one.
    let inner = "GET /admin HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let stream = format!(
        "POST /a HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\r\n{inner}\
         POST /b HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n{GET}",
        inner.len(),
        inner.len(),
    );
    assert_eq!(first_refused(stream.as_bytes()), None);
    let (_, scanner) = scan(stream.as_bytes(), 3);
    assert_eq!(scanner.heads, 3);
}

#[test]
fn it_stops_where_hyper_decides_alone() {
    for (what, bytes) in [
        (
            "the HTTP/2 preface",
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        ),
        ("not HTTP", b"\x16\x03\x01\x02\x00"),
        ("a CONNECT", b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\nGET"),
        (
            "a coding other than chunked last",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "a length that is not a number",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        ),
        (
            "a bad chunk size",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ),
    ] {
        let (verdicts, scanner) = scan(bytes, bytes.len());
        assert!(!scanner.is_following(), "{what}");
        assert!(verdicts.refused(0).is_none(), "{what}");
    }
}

#[test]
fn an_oversized_head_stops_the_scan_without_buffering_more() {
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nx-big: ".to_vec();
    head.resize(MAX_HEAD + 10, b'a');
    let (_, scanner) = scan(&head, 1000);
    assert!(!scanner.is_following());
    assert!(scanner.partial.capacity() == 0);
}

#[test]
fn a_huge_chunk_size_stops_the_scan() {
    let bytes = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                  fffffffffffffffffffff\r\n";
    let (_, scanner) = scan(bytes, bytes.len());
    assert!(!scanner.is_following());
}

#[tokio::test]
async fn the_stream_passes_bytes_unchanged_and_records_the_verdict() {
    let bad = "POST /x HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\
               Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let sent = format!("{GET}{bad}");
    let (mut client, server) = tokio::io::duplex(16);
    let (mut guarded, verdicts) = Guarded::new(server);
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            client.write_all(sent.as_bytes()).await.unwrap();
            client.shutdown().await.unwrap();
            client
        }
    });
    let mut received = String::new();
    guarded.read_to_string(&mut received).await.unwrap();
    writer.await.unwrap();
    assert_eq!(received, sent);
    assert!(verdicts.refused(0).is_none());
    assert_eq!(
        verdicts.refused(1),
        Some(&HeadError::ContentLengthWithTransferEncoding)
    );
}
