//! The image of a link card (1200 × 630 PNG): the space's title, host,
//! state and audience, drawn on the node with a bundled font (DejaVu Sans
//! Bold, assets/DejaVu-LICENSE.txt). Plain text is rasterised glyph by
//! glyph: no markup is interpreted, so a title cannot inject anything.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};

/// Width and height of a card image (the size chat apps show large).
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 630;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-Bold.ttf");

type Rgb = [u8; 3];
const BG: Rgb = [0x0f, 0x11, 0x15];
const FG: Rgb = [0xe9, 0xec, 0xf1];
const MUTED: Rgb = [0x9a, 0xa3, 0xb2];
const ACCENT: Rgb = [0x8a, 0xa4, 0xff];
const LIVE: Rgb = [0xff, 0x4d, 0x6d];

/// What a card shows.
pub struct CardText<'a> {
    pub title: &'a str,
    pub host: &'a str,
    /// "live", "scheduled" or "ended".
    pub state: &'a str,
    /// A second line: "1,234 listening", "Scheduled for …", "Replay available".
    pub detail: &'a str,
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        let mut px = Vec::with_capacity((WIDTH * HEIGHT * 3) as usize);
        for _ in 0..WIDTH * HEIGHT {
            px.extend_from_slice(&BG);
        }
        Canvas { px }
    }

    fn blend(&mut self, x: i64, y: i64, c: Rgb, a: f32) {
        if x < 0 || y < 0 || x >= i64::from(WIDTH) || y >= i64::from(HEIGHT) {
            return;
        }
        let i = ((y as usize) * WIDTH as usize + x as usize) * 3;
        let a = a.clamp(0.0, 1.0);
        for (dst, src) in self.px[i..i + 3].iter_mut().zip(c) {
            let d = f32::from(*dst);
            *dst = (d + (f32::from(src) - d) * a).round() as u8;
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Rgb) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.blend(x, y, c, 1.0);
            }
        }
    }

    /// Draws `text` with its baseline at `y`, from `x`; returns the end x.
    fn text(&mut self, font: &FontRef<'_>, size: f32, x: f32, y: f32, text: &str, c: Rgb) -> f32 {
        let scale = PxScale::from(size);
        let sf = font.as_scaled(scale);
        let mut caret = x;
        let mut prev = None;
        for ch in text.chars().filter(|c| !c.is_control()) {
            let id = sf.glyph_id(ch);
            if let Some(p) = prev {
                caret += sf.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(caret, y));
            caret += sf.h_advance(id);
            prev = Some(id);
            if let Some(outline) = font.outline_glyph(glyph) {
                let b = outline.px_bounds();
                outline.draw(|gx, gy, a| {
                    self.blend(
                        b.min.x as i64 + i64::from(gx),
                        b.min.y as i64 + i64::from(gy),
                        c,
                        a,
                    )
                });
            }
        }
        caret
    }
}

/// Width of `text` at `size`.
fn measure(font: &FontRef<'_>, size: f32, text: &str) -> f32 {
    let sf = font.as_scaled(PxScale::from(size));
    text.chars()
        .filter(|c| !c.is_control())
        .map(|c| sf.h_advance(sf.glyph_id(c)))
        .sum()
}

/// Splits `text` into at most `lines` lines of at most `width` px, the
/// last one ending in "…" if cut.
fn wrap(font: &FontRef<'_>, size: f32, text: &str, width: f32, lines: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let next = if cur.is_empty() {
            word.to_owned()
        } else {
            format!("{cur} {word}")
        };
        if measure(font, size, &next) <= width {
            cur = next;
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        // A word longer than a line is cut by characters.
        let mut piece = String::new();
        for ch in word.chars() {
            piece.push(ch);
            if measure(font, size, &piece) > width {
                piece.pop();
                out.push(std::mem::take(&mut piece));
                piece.push(ch);
            }
        }
        cur = piece;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    if out.len() > lines {
        out.truncate(lines);
        let last = out.last_mut().expect("lines ≥ 1");
        while !last.is_empty() && measure(font, size, &format!("{last}…")) > width {
            last.pop();
        }
        last.push('…');
    }
    out
}

/// The card as a PNG.
pub fn render(card: &CardText<'_>) -> Result<Vec<u8>, png::EncodingError> {
    // The bundled font is a valid TrueType file (a build-time asset).
    let font = FontRef::try_from_slice(FONT).expect("bundled font parses");
    let mut c = Canvas::new();
    c.rect(0, 0, i64::from(WIDTH), 10, ACCENT);
    c.text(&font, 44.0, 72.0, 112.0, "amphi", ACCENT);
    let (badge, color) = match card.state {
        "live" => ("● LIVE", LIVE),
        "scheduled" => ("SCHEDULED", MUTED),
        _ => ("ENDED", MUTED),
    };
    let bw = measure(&font, 34.0, badge);
    let bx = WIDTH as f32 - 72.0 - bw;
    c.text(&font, 34.0, bx, 108.0, badge, color);
    let mut y = 240.0;
    for line in wrap(&font, 68.0, card.title, WIDTH as f32 - 144.0, 3) {
        c.text(&font, 68.0, 72.0, y, &line, FG);
        y += 82.0;
    }
    let host = wrap(
        &font,
        36.0,
        &format!("hosted by {}", card.host),
        WIDTH as f32 - 144.0,
        1,
    );
    if let Some(h) = host.first() {
        c.text(&font, 36.0, 72.0, 520.0, h, MUTED);
    }
    c.text(
        &font,
        36.0,
        72.0,
        575.0,
        card.detail,
        if card.state == "live" { LIVE } else { MUTED },
    );
    let mut out = Vec::with_capacity(64 * 1024);
    {
        let mut enc = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&c.px)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_is_a_png_of_the_right_size_with_text_drawn() {
        let png = render(&CardText {
            title: "<script>alert(1)</script> A very long title that has to wrap across several lines of the card to fit, and is then cut short with an ellipsis",
            host: "Hana",
            state: "live",
            detail: "1,234 listening",
        })
        .unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(&png));
        let mut r = dec.read_info().unwrap();
        let info = r.info();
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        // Text pixels (the title's colour) exist in the title's band.
        let row = |y: usize| &buf[y * WIDTH as usize * 3..(y + 1) * WIDTH as usize * 3];
        assert!((190..240).any(|y| row(y).chunks(3).any(|p| p[0] > 200 && p[1] > 200)));
        assert!(png.len() < 200_000, "{} bytes", png.len());
    }

    #[test]
    fn wrapping_bounds_lines_and_ellipsises() {
        let font = FontRef::try_from_slice(FONT).unwrap();
        let lines = wrap(&font, 68.0, &"word ".repeat(100), 1056.0, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with('…'));
        assert!(lines.iter().all(|l| measure(&font, 68.0, l) <= 1056.0));
        let long = wrap(&font, 68.0, &"x".repeat(200), 1056.0, 2);
        assert_eq!(long.len(), 2);
    }
}
