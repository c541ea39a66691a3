//! The critical rendition of clips made by ffmpeg, checked by ffprobe and ffmpeg's decoder.
//!
//! Needs `ffmpeg` (with libx264, libx265 and mpeg2video, as Debian's has them) and `ffprobe`;
//! .ci/run installs ffmpeg. Without them the tests print why and pass off CI; under CI they fail
//! instead.

use std::path::{Path, PathBuf};

mod common;
#[path = "common/media.rs"]
mod media;

use blockcast_edge::ts::{CriticalFilter, Rendition, RenditionConfig, RenditionError};
use media::{decode_errors, duration, make_clip, video_frames, H264};

/// Whether ffmpeg (with `encoder`) and ffprobe are here; `false` (with the reason printed) off CI.
fn have_ffmpeg_with(encoder: &str) -> bool {
    common::can_run(media::ffmpeg_missing(encoder))
}

/// Runs the filter over `input` in uneven chunks, as blocks of a file arrive.
fn render(input: &[u8], rendition: Rendition) -> Result<Vec<u8>, RenditionError> {
    let mut filter = CriticalFilter::new(RenditionConfig {
        rendition,
        ..RenditionConfig::default()
    });
    let mut out = Vec::new();
    for chunk in input.chunks(65_521) {
        filter.push(chunk, &mut out)?;
    }
    filter.finish(&mut out)?;
    Ok(out)
}

fn rendition_of(dir: &Path, clip: &Path, rendition: Rendition) -> PathBuf {
    let out = render(&std::fs::read(clip).unwrap(), rendition).expect("an H.264 clip renders");
    // The case is exercised: pictures that carried the clock were dropped.
    assert!(media::assert_continuous(&out) > 0, "no PCR-only packet");
    let path = dir.join(format!("{rendition:?}.ts"));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn the_key_frame_rendition_holds_only_i_pictures_decodes_cleanly_and_keeps_its_duration() {
    if !have_ffmpeg_with("libx264") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "clip.ts", H264);
    let full = video_frames(&clip);
    // The case is exercised: the clip has P and B pictures to drop.
    assert!(full.iter().any(|(_, kind)| kind == "B") && full.iter().any(|(_, kind)| kind == "P"));

    let out = rendition_of(dir.path(), &clip, Rendition::KeyFrames);
    let frames = video_frames(&out);
    assert_eq!(frames.len(), 10, "one key frame per second: {frames:?}");
    assert!(frames.iter().all(|(_, kind)| kind == "I"), "{frames:?}");
    assert_eq!(decode_errors(&out), "");
    // Timestamps are kept: the same first picture, and the last within one GOP (1 s).
    let (first_in, last_in) = (full[0].0, full[full.len() - 1].0);
    let (first_out, last_out) = (frames[0].0, frames[frames.len() - 1].0);
    assert_eq!(first_out, first_in);
    assert!(
        last_in - last_out <= 1.0,
        "last picture at {last_out}, input's at {last_in}"
    );
    let (whole_in, whole_out) = (duration(&clip), duration(&out));
    assert!(
        (whole_in - whole_out).abs() <= 1.0,
        "{whole_out} s, input {whole_in} s"
    );
}

#[test]
fn an_open_gop_clip_keeps_its_i_pictures_renumbered_and_decodes_cleanly() {
    if !have_ffmpeg_with("libx264") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // x264's open GOP: one IDR picture, then I pictures that are not IDR (recovery points).
    let args = [H264, &["-x264-params", "open-gop=1"]].concat();
    let clip = make_clip(dir.path(), "clip.ts", &args);
    let full = video_frames(&clip);
    let key_frames: Vec<f64> = full
        .iter()
        .filter(|(_, kind)| kind == "I")
        .map(|(time, _)| *time)
        .collect();
    assert_eq!(key_frames.len(), 10);
    for rendition in [Rendition::KeyFrames, Rendition::NoBFrames] {
        let out = rendition_of(dir.path(), &clip, rendition);
        let frames = video_frames(&out);
        // Every I picture, at its time: those after dropped reference pictures renumbered.
        let times: Vec<f64> = frames
            .iter()
            .filter(|(_, kind)| kind == "I")
            .map(|(time, _)| *time)
            .collect();
        assert_eq!(times, key_frames, "{rendition:?}: {frames:?}");
        assert!(
            frames.iter().all(|(_, kind)| kind == "I" || kind == "P"),
            "{frames:?}"
        );
        assert_eq!(decode_errors(&out), "", "{rendition:?}");
    }
}

#[test]
fn the_no_b_rendition_holds_i_and_p_pictures_and_decodes_cleanly() {
    if !have_ffmpeg_with("libx264") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // B pictures that are not references, so every P picture stays decodable.
    let args = [H264, &["-x264-params", "b-pyramid=none"]].concat();
    let clip = make_clip(dir.path(), "clip.ts", &args);
    let out = rendition_of(dir.path(), &clip, Rendition::NoBFrames);
    let frames = video_frames(&out);
    assert!(frames.iter().any(|(_, kind)| kind == "P"), "{frames:?}");
    assert!(
        frames.iter().all(|(_, kind)| kind == "I" || kind == "P"),
        "{frames:?}"
    );
    assert_eq!(decode_errors(&out), "");
}

#[test]
fn the_key_frame_rendition_of_h265_holds_only_irap_pictures_and_decodes_cleanly() {
    if !have_ffmpeg_with("libx265") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error:keyint=25:bframes=2",
    ];
    let clip = make_clip(dir.path(), "hevc.ts", &args);
    let full = video_frames(&clip);
    assert!(full.iter().any(|(_, kind)| kind == "B") && full.iter().any(|(_, kind)| kind == "P"));
    for rendition in [Rendition::KeyFrames, Rendition::NoBFrames] {
        let out = rendition_of(dir.path(), &clip, rendition);
        let frames = video_frames(&out);
        assert_eq!(frames.len(), 10, "{rendition:?}: {frames:?}");
        assert!(frames.iter().all(|(_, kind)| kind == "I"), "{frames:?}");
        assert_eq!(decode_errors(&out), "");
        assert_eq!(frames[0].0, full[0].0);
    }
}

#[test]
fn a_transport_stream_without_h264_is_refused() {
    if !have_ffmpeg_with("mpeg2video") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "mpeg2.ts", &["-c:v", "mpeg2video"]);
    let result = render(&std::fs::read(clip).unwrap(), Rendition::KeyFrames);
    // 0x02: MPEG-2 video.
    assert_eq!(
        result,
        Err(RenditionError::NoSupportedVideo {
            stream_type: Some(0x02)
        })
    );
}

#[test]
fn garbage_is_not_a_transport_stream_and_gives_no_output() {
    let text = b"this is not an MPEG transport stream, only words. ".repeat(100);
    let mut filter = CriticalFilter::new(RenditionConfig::default());
    let mut out = Vec::new();
    assert_eq!(
        filter.push(&text, &mut out),
        Err(RenditionError::NotTransportStream { offset: 0 })
    );
    assert!(out.is_empty());
    // The error sticks.
    assert_eq!(
        filter.finish(&mut out),
        Err(RenditionError::NotTransportStream { offset: 0 })
    );
}

#[test]
fn sync_bytes_with_no_tables_behind_them_have_no_program_map() {
    let mut packet = [0u8; 188];
    packet[0] = 0x47;
    packet[1] = 0x01;
    packet[3] = 0x10;
    let input = packet.repeat(50);
    assert_eq!(
        render(&input, Rendition::KeyFrames),
        Err(RenditionError::NoProgramMap)
    );
}
