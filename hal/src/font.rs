//! A 5×7 bitmap font for the digits and `:`, enough for the simulated
//! camera's clock overlay.

/// Rows of each glyph, top to bottom; bit 4 is the leftmost column.
fn glyph(c: char) -> Option<[u8; 7]> {
    Some(match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        _ => return None,
    })
}

/// Draws `text` into an RGB image at (`x`, `y`), each font pixel `scale`² pixels.
pub fn draw(rgb: &mut [u8], width: usize, x: usize, y: usize, scale: usize, text: &str, color: [u8; 3]) {
    let height = rgb.len() / (3 * width.max(1));
    for (i, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = x + (i * 6 + col) * scale + dx;
                        let py = y + row * scale + dy;
                        if px < width && py < height {
                            let at = (py * width + px) * 3;
                            rgb[at..at + 3].copy_from_slice(&color);
                        }
                    }
                }
            }
        }
    }
}
