//! Clips made by ffmpeg and read back by ffprobe and ffmpeg's decoder, for the critical
//! rendition's tests here and the edge's in cli/tests/edge.rs (which includes this file).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why ffmpeg (with `encoder`) and ffprobe cannot be used here, if they cannot.
pub fn ffmpeg_missing(encoder: &str) -> Option<String> {
    let encoders = Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .output();
    let probe = Command::new("ffprobe").arg("-version").output();
    match (&encoders, &probe) {
        (Ok(encoders), Ok(probe)) if probe.status.success() => {
            let listed = String::from_utf8_lossy(&encoders.stdout).contains(encoder);
            (!listed).then(|| format!("ffmpeg has no {encoder} encoder"))
        }
        _ => Some("ffmpeg and ffprobe are needed".to_string()),
    }
}

pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 10-second 25 fps clip with a GOP of 25, two B pictures between P pictures and AAC audio.
pub fn make_clip(dir: &Path, name: &str, video_args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=10:size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=10",
    ];
    args.extend_from_slice(video_args);
    args.extend_from_slice(&["-c:a", "aac", "-f", "mpegts", path.to_str().unwrap()]);
    ffmpeg(&args);
    path
}

pub const H264: &[&str] = &["-c:v", "libx264", "-g", "25", "-bf", "2"];

/// (presentation time, picture type) of every video frame ffprobe finds.
pub fn video_frames(path: &Path) -> Vec<(f64, String)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_frames"])
        .args([
            "-show_entries",
            "frame=pts_time,pict_type",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let time = fields.next()?.parse().ok()?;
            Some((time, fields.next()?.to_string()))
        })
        .collect()
}

/// What ffmpeg's decoder reports about a file at level error (nothing when it decodes cleanly).
pub fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The whole file's duration as ffprobe reads it.
pub fn duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Picture types of the video frames ffprobe finds.
pub fn pict_types(path: &Path) -> Vec<String> {
    video_frames(path).into_iter().map(|(_, t)| t).collect()
}

/// Every PID's continuity counter goes up by one per packet with a payload and stays put on a
/// packet without one (ISO/IEC 13818-1 §2.4.3.3); returns the packets with no payload.
pub fn assert_continuous(ts: &[u8]) -> usize {
    assert_eq!(ts.len() % 188, 0);
    let mut last = std::collections::HashMap::new();
    let mut without_payload = 0;
    for (index, packet) in ts.chunks_exact(188).enumerate() {
        assert_eq!(packet[0], 0x47, "packet {index}");
        let pid = u16::from_be_bytes([packet[1] & 0x1f, packet[2]]);
        let counter = packet[3] & 0x0f;
        let payload = packet[3] & 0x10 != 0;
        without_payload += usize::from(!payload);
        if let Some(previous) = last.insert(pid, counter) {
            let expected = if payload {
                (previous + 1) & 0x0f
            } else {
                previous
            };
            assert_eq!(counter, expected, "packet {index}, PID {pid:#x}");
        }
    }
    without_payload
}
