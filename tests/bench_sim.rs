//! `postsock bench --sim` runs both stacks to completion in the simulator. (Its wall-time
//! ratio is a benchmark figure, recorded in BENCHMARKS.md, never asserted.) What is asserted
//! is simulated time, which is exact: postsock moves the bytes as fast as bare quinn on the
//! same simulated path, give or take its close.

use testbed::bench_sim::{transfer, Stack};

#[test]
fn postsock_and_bare_quinn_move_the_same_bytes_at_the_same_simulated_pace() {
    let bytes = 2 << 20;
    let (_, bare) = transfer(Stack::BareQuinn, bytes, 1).expect("bare quinn");
    let (_, postsock) = transfer(Stack::Postsock, bytes, 1).expect("postsock");
    let (bare, postsock) = (bare.as_secs_f64(), postsock.as_secs_f64());
    eprintln!("simulated: bare quinn {bare:.3} s, postsock {postsock:.3} s");
    // 2 MiB at 100 Mbit/s is 0.17 s of serialisation, plus handshake and slow start at a
    // 40 ms RTT; postsock adds its goodbye (at most 4 RTT, 160 ms) to the close.
    assert!(bare > 0.17, "bare quinn {bare}");
    assert!(
        postsock <= bare + 0.2,
        "postsock {postsock} s against bare quinn {bare} s"
    );
    // Deterministic: the same seed gives the same simulated time.
    let (_, again) = transfer(Stack::Postsock, bytes, 1).expect("postsock again");
    assert_eq!(again.as_secs_f64(), postsock);
}
