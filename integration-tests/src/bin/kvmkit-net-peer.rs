//! The host end of the test guest's network check (tools/guest/init_net.c), run inside the test's
//! network namespace:
//!
//! ```text
//! kvmkit-net-peer ADDR BYTES [SECONDS]
//! ```
//!
//! Listens on ADDR port 5001 and 5002 and prints `PEER-READY`. On 5001 it takes one connection,
//! reads it to its end, checks it byte for byte against stream 1 and prints
//! `PEER-RX bytes=N bad=B us=T`; on 5002 it takes one connection, writes BYTES of stream 2, closes it
//! and prints `PEER-TX bytes=N us=T`. It exits 0 when both are done, or 1 after SECONDS (default 600).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use kvmkit_integration_tests::stream::Stream;

fn receive(listener: &TcpListener) -> String {
    let Ok((mut conn, _)) = listener.accept() else {
        return "PEER-RX error=accept".into();
    };
    let t0 = Instant::now();
    let (mut stream, mut buf, mut want) = (Stream::new(1), vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let (mut bytes, mut bad) = (0u64, 0u64);
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stream.fill(&mut want[..n]);
                bad += buf[..n]
                    .iter()
                    .zip(&want[..n])
                    .filter(|(a, b)| a != b)
                    .count() as u64;
                bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return format!("PEER-RX bytes={bytes} error={e}"),
        }
    }
    format!(
        "PEER-RX bytes={bytes} bad={bad} us={}",
        t0.elapsed().as_micros()
    )
}

fn send(listener: &TcpListener, total: u64) -> String {
    let Ok((mut conn, _)) = listener.accept() else {
        return "PEER-TX error=accept".into();
    };
    let t0 = Instant::now();
    let (mut stream, mut buf, mut sent) = (Stream::new(2), vec![0u8; 1 << 16], 0u64);
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        stream.fill(&mut buf[..n]);
        if let Err(e) = conn.write_all(&buf[..n]) {
            return format!("PEER-TX bytes={sent} error={e}");
        }
        sent += n as u64;
    }
    drop(conn);
    format!("PEER-TX bytes={sent} us={}", t0.elapsed().as_micros())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(Ok(total))) = (args.first(), args.get(1).map(|b| b.parse::<u64>()))
    else {
        eprintln!("usage: kvmkit-net-peer ADDR BYTES [SECONDS]");
        return std::process::ExitCode::from(2);
    };
    let limit = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(600);
    let listen = |port: u16| TcpListener::bind((addr.as_str(), port));
    let (rx, tx) = match (listen(5001), listen(5002)) {
        (Ok(rx), Ok(tx)) => (rx, tx),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kvmkit-net-peer: cannot listen on {addr}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("PEER-READY");
    let _ = std::io::stdout().flush();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(limit));
        println!("PEER-TIMEOUT after {limit} s");
        std::process::exit(1);
    });
    let receiver = std::thread::spawn(move || receive(&rx));
    println!("{}", send(&tx, total));
    println!(
        "{}",
        receiver
            .join()
            .unwrap_or_else(|_| "PEER-RX error=panic".into())
    );
    std::process::ExitCode::SUCCESS
}
