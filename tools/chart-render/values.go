// Values: -f files and --set merged, then coalesced with the chart's defaults, as Helm 3 does.
package main

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

func encodeBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// mergeMaps is Helm's cli/values mergeMaps: b over a, maps merged deeply, anything else
// replaced (lists are replaced whole).
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if vm, ok := v.(map[string]interface{}); ok {
			if bv, ok := out[k]; ok {
				if bm, ok := bv.(map[string]interface{}); ok {
					out[k] = mergeMaps(bm, vm)
					continue
				}
			}
		}
		out[k] = v
	}
	return out
}

// coalesce is Helm's chartutil.CoalesceValues for one chart: the user's values over the
// chart's defaults; a user's null deletes the default (that is how a default is unset).
func coalesce(defaults, user map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range user {
		out[k] = v
	}
	for k, dv := range defaults {
		uv, present := out[k]
		switch {
		case !present:
			out[k] = copyValue(dv)
		case uv == nil:
			delete(out, k)
		default:
			um, uok := uv.(map[string]interface{})
			dm, dok := dv.(map[string]interface{})
			if uok && dok {
				out[k] = coalesce(dm, um)
			}
		}
	}
	// A null the user gave for a key with no default is dropped too.
	for k, v := range out {
		if v == nil {
			delete(out, k)
		}
	}
	return out
}

func copyValue(v interface{}) interface{} {
	switch x := v.(type) {
	case map[string]interface{}:
		m := make(map[string]interface{}, len(x))
		for k, vv := range x {
			m[k] = copyValue(vv)
		}
		return m
	case []interface{}:
		l := make([]interface{}, len(x))
		for i, vv := range x {
			l[i] = copyValue(vv)
		}
		return l
	default:
		return v
	}
}

// typedVal is Helm's strvals typing of a --set value: true/false, null, integers (not with a
// leading zero), else a string. --set-string keeps every value a string.
func typedVal(val string, asString bool) interface{} {
	if asString {
		return val
	}
	switch {
	case strings.EqualFold(val, "true"):
		return true
	case strings.EqualFold(val, "false"):
		return false
	case strings.EqualFold(val, "null"):
		return nil
	case val == "0":
		return int64(0)
	}
	if len(val) != 0 && val[0] != '0' {
		if iv, err := strconv.ParseInt(val, 10, 64); err == nil {
			return iv
		}
	}
	return val
}

// splitUnescaped splits s on sep where it is not escaped with `\` and not inside `{…}`; the
// escapes of sep stay in the parts (removed later).
func splitUnescaped(s string, sep rune) []string {
	var parts []string
	var cur strings.Builder
	depth := 0
	escaped := false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune('\\')
			cur.WriteRune(r)
			escaped = false
			continue
		case r == '\\':
			escaped = true
			continue
		case r == '{':
			depth++
		case r == '}' && depth > 0:
			depth--
		case r == sep && depth == 0:
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteRune(r)
	}
	if escaped {
		cur.WriteRune('\\')
	}
	return append(parts, cur.String())
}

func unescape(s string) string {
	var b strings.Builder
	escaped := false
	for _, r := range s {
		if escaped {
			b.WriteRune(r)
			escaped = false
		} else if r == '\\' {
			escaped = true
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// parseSet applies one --set (or --set-string) argument to base: `a.b=c,d={x,y},e[1]=f`.
func parseSet(base map[string]interface{}, arg string, asString bool) error {
	for _, assignment := range splitUnescaped(arg, ',') {
		if assignment == "" {
			continue
		}
		kv := splitUnescaped(assignment, '=')
		if len(kv) < 2 {
			return fmt.Errorf("key %q has no value", unescape(kv[0]))
		}
		key, raw := kv[0], strings.Join(kv[1:], "=")
		var val interface{}
		if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
			list := []interface{}{}
			inner := raw[1 : len(raw)-1]
			if inner != "" {
				for _, item := range splitUnescaped(inner, ',') {
					list = append(list, typedVal(unescape(item), asString))
				}
			}
			val = list
		} else {
			val = typedVal(unescape(raw), asString)
		}
		if err := setPath(base, splitUnescaped(key, '.'), val); err != nil {
			return fmt.Errorf("%s: %w", unescape(key), err)
		}
	}
	return nil
}

func setPath(m map[string]interface{}, segs []string, val interface{}) error {
	seg := segs[0]
	idx := -1
	if i := strings.Index(seg, "["); i > 0 && strings.HasSuffix(seg, "]") {
		n, err := strconv.Atoi(seg[i+1 : len(seg)-1])
		if err != nil || n < 0 {
			return fmt.Errorf("bad list index in %q", seg)
		}
		if n > 65536 {
			return fmt.Errorf("index of %d is greater than maximum supported index of 65536", n)
		}
		idx = n
		seg = seg[:i]
	}
	seg = unescape(seg)
	if seg == "" {
		return fmt.Errorf("empty key")
	}
	last := len(segs) == 1
	if idx < 0 {
		if last {
			m[seg] = val
			return nil
		}
		next, ok := m[seg].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[seg] = next
		}
		return setPath(next, segs[1:], val)
	}
	list, _ := m[seg].([]interface{})
	for len(list) <= idx {
		list = append(list, nil)
	}
	if last {
		list[idx] = val
	} else {
		next, ok := list[idx].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
		}
		if err := setPath(next, segs[1:], val); err != nil {
			return err
		}
		list[idx] = next
	}
	m[seg] = list
	return nil
}
