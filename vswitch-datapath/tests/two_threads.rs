//! Driver and device on two threads, as in a real guest: the acquire/release pairs on the avail
//! and used indices make every payload and used element visible before its index.

use std::sync::atomic::{AtomicBool, Ordering};

use vswitch_datapath::testguest::TestGuest;
use vswitch_datapath::{DescChain, RingFeatures};

const PACKETS: u32 = 20_000;
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn packet(seq: u32) -> Vec<u8> {
    vec![seq as u8 ^ 0x5a; (seq % 61 + 1) as usize]
}

#[test]
fn driver_and_device_on_two_threads_exchange_buffers_in_order() {
    let g = TestGuest::with_regions(&[(0x10_0000, 16 << 20)]);
    let mut dq = g.add_queue(64, RingFeatures::EVENT_IDX | RingFeatures::INDIRECT_DESC);
    let mut q = dq.device(&g);
    let mem = g.memory().clone();
    let done = AtomicBool::new(false);
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        let device = s.spawn(|| {
            let mut c = DescChain::new();
            let mut seq = 0u32;
            let mut buf = [0u8; 64];
            while seq < PACKETS {
                let mut n = 0;
                while q.pop(&mut c).unwrap() {
                    let want = packet(seq);
                    assert_eq!(c.readable_len() as usize, want.len());
                    mem.gather(c.readable(), &mut buf[..want.len()]).unwrap();
                    assert_eq!(&buf[..want.len()], &want[..], "packet {seq}");
                    q.push_used(c.head(), seq).unwrap();
                    seq += 1;
                    n += 1;
                    if n == 16 {
                        break;
                    }
                }
                if n > 0 {
                    q.publish_used().unwrap();
                } else {
                    assert!(start.elapsed() < LIMIT, "device stalled (driver gone?)");
                    std::hint::spin_loop();
                }
            }
            done.store(true, Ordering::Release);
        });
        let (mut sent, mut recvd) = (0u32, 0u32);
        while recvd < PACKETS {
            // The device may finish (all packets taken) before the last used entries are read.
            assert!(!(device.is_finished() && sent < PACKETS), "device thread stopped early");
            assert!(start.elapsed() < LIMIT, "driver stalled");
            while sent < PACKETS && dq.free_descriptors() >= 2 {
                dq.post_tx(
                    &g,
                    &packet(sent),
                    if sent % 3 == 0 && packet(sent).len() > 1 { 2 } else { 1 },
                    sent % 5 == 0,
                );
                sent += 1;
                if sent % 7 == 0 {
                    break;
                }
            }
            while let Some(e) = dq.pop_used(&g) {
                assert_eq!(e.len, recvd, "used entries come back in order");
                recvd += 1;
            }
            std::hint::spin_loop();
        }
    });
    assert!(done.load(Ordering::Acquire));
}
