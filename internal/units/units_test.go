package units

import "testing"

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"4k": 4096, "4K": 4096, "4KiB": 4096, "4kb": 4096, "1m": 1 << 20, "2g": 2 << 30, "512": 512, "0x1000": 4096, "1t": 1 << 40, "1p": 1 << 50, "7b": 7, " 8k ": 8192} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"4x", "k", "", "4kk", "-1", "10%", "4kx", "0xzz", "9999999999999999999", "16777216t"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) succeeded", s)
		}
	}
}
