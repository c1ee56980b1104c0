//! `cargo xtask download-cifar` against a real HTTP server on 127.0.0.1, serving small
//! synthetic archives: a normal download, a transfer cut off half-way and resumed, corrupt
//! archives, a 404, and a local archive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use vq_data::{Cifar10, Split, DIR_NAME, FILE_BYTES, RECORD_BYTES, TEST_FILES, TRAIN_FILES};

/// A CIFAR-10 archive with the official layout and sizes; pixels are a cheap pattern so that it
/// compresses to a few hundred kB.
fn synthetic_archive(bad_label: bool) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("{DIR_NAME}/{name}"), data)
            .unwrap();
    };
    for (f, name) in TRAIN_FILES.iter().chain(TEST_FILES.iter()).enumerate() {
        let mut data = vec![0u8; FILE_BYTES as usize];
        for (r, record) in data.chunks_exact_mut(RECORD_BYTES).enumerate() {
            record[0] = ((r + f) % 10) as u8;
            record[1] = (r % 251) as u8;
        }
        if bad_label && f == 2 {
            data[7 * RECORD_BYTES] = 12;
        }
        add(name, &data);
    }
    add(
        "batches.meta.txt",
        vq_data::CLASS_NAMES.join("\n").as_bytes(),
    );
    add("readme.html", b"<html>synthetic</html>");
    tar.into_inner().unwrap().finish().unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Normal,
    /// The first response announces the whole body but the connection closes half-way.
    CutFirstAtHalf,
}

/// A minimal HTTP/1.1 server: serves `body` at `/cifar.tar.gz` (with Range support), 404
/// elsewhere. Records each request's Range header ("" when none).
fn serve(body: Vec<u8>, behaviour: Behaviour) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cifar.tar.gz", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let cut = behaviour == Behaviour::CutFirstAtHalf && i == 0;
            let _ = respond(stream, &body, cut, &seen);
        }
    });
    (url, log)
}

fn respond(
    mut stream: TcpStream,
    body: &[u8],
    cut: bool,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = v.trim().to_owned();
            }
        }
    }
    log.lock().unwrap().push(range.clone());
    if request_line.split_whitespace().nth(1) != Some("/cifar.tar.gz") {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let start: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let part = &body[start..];
    let head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
            part.len(),
            body.len() - 1,
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            part.len()
        )
    };
    stream.write_all(head.as_bytes())?;
    if cut {
        stream.write_all(&part[..part.len() / 2])?;
        stream.flush()?;
        return stream.shutdown(std::net::Shutdown::Both);
    }
    stream.write_all(part)
}

fn xtask(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn download(from: &str, dest: &Path) -> Output {
    xtask(&[
        "download-cifar",
        "--from",
        from,
        "--dest",
        dest.to_str().unwrap(),
        "--retries",
        "3",
    ])
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn check_dataset(dest: &Path) {
    let dir = dest.join(DIR_NAME);
    let train = Cifar10::load(&dir, Split::Train).unwrap();
    let test = Cifar10::load(&dir, Split::Test).unwrap();
    assert_eq!(train.len(), 50_000);
    assert_eq!(test.len(), 10_000);
    // Train record 10,001 is record 1 of file 1 (data_batch_2.bin): label (1 + 1) % 10, pixel 1.
    assert_eq!(train.labels[10_001], 2);
    assert_eq!(train.images[[10_001, 0, 0, 0]], 1);
    assert_eq!(train.class_names[3], "cat");
    assert_eq!(
        entries(dest),
        vec![DIR_NAME.to_string()],
        "only the dataset is left"
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn normal_download_then_nothing_to_do() {
    let (url, log) = serve(synthetic_archive(false), Behaviour::Normal);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("datasets");
    let out = download(&url, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    check_dataset(&dest);
    assert!(
        stderr(&out).contains("not the official archive"),
        "{}",
        stderr(&out)
    );
    assert_eq!(log.lock().unwrap().len(), 1);

    let again = download(&url, &dest);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("already"), "{}", stderr(&again));
    assert_eq!(log.lock().unwrap().len(), 1, "a second run fetches nothing");
}

#[test]
fn cut_off_transfer_resumes_with_range() {
    let body = synthetic_archive(false);
    let half = body.len() / 2;
    let (url, log) = serve(body, Behaviour::CutFirstAtHalf);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("datasets");
    let out = download(&url, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    check_dataset(&dest);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0], "");
    assert_eq!(log[1], format!("bytes={half}-"));
}

#[test]
fn corrupt_archives_leave_nothing_behind() {
    // Not a gzip stream at all.
    let (url, _) = serve(b"this is not an archive".repeat(100), Behaviour::Normal);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("datasets");
    let out = download(&url, &dest);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cifar-10-binary.tar.gz"),
        "{}",
        stderr(&out)
    );
    assert_eq!(entries(&dest), Vec::<String>::new());

    // A well-formed archive whose third file has a label of 12.
    let (url, _) = serve(synthetic_archive(true), Behaviour::Normal);
    let out = download(&url, &dest);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("structural check")
            && err.contains("data_batch_3.bin")
            && err.contains("record 7"),
        "{err}"
    );
    assert_eq!(entries(&dest), Vec::<String>::new());

    // A truncated archive (half of it, from a local file).
    let full = synthetic_archive(false);
    let local = tmp.path().join("half.tar.gz");
    std::fs::write(&local, &full[..full.len() / 2]).unwrap();
    let out = download(local.to_str().unwrap(), &dest);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("half.tar.gz"), "{}", stderr(&out));
    assert_eq!(entries(&dest), Vec::<String>::new());
    assert!(local.exists(), "a user's own archive is never deleted");
}

#[test]
fn not_found_is_a_clear_error_without_retries() {
    let (url, log) = serve(Vec::new(), Behaviour::Normal);
    let url = url.replace("cifar.tar.gz", "missing.tar.gz");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("datasets");
    let out = download(&url, &dest);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(entries(&dest), Vec::<String>::new());
}

#[test]
fn local_archive_is_accepted_after_the_structural_check() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("cifar.tar.gz");
    std::fs::write(&local, synthetic_archive(false)).unwrap();
    let dest = tmp.path().join("datasets");
    let out = download(local.to_str().unwrap(), &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    check_dataset(&dest);
    assert!(local.exists());
    // Read the whole archive once more to make sure the test data itself is sane.
    let mut bytes = Vec::new();
    std::fs::File::open(&local)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert!(
        bytes.len() < 2_000_000,
        "synthetic archive is small: {}",
        bytes.len()
    );
}
