package promql

import "testing"

func TestPodQuery(t *testing.T) {
	for _, tc := range []struct {
		metric, namespace string
		pods              []string
		want              string
	}{
		{"modelops_inflight_requests", "team-a", []string{"web-1", "web-2"},
			`sum by (pod) (modelops_inflight_requests{namespace="team-a", pod=~"web-1|web-2"})`},
		// A pod name's dots are quoted for the regular expression: `a.b` must not match `axb`.
		{"ns:rate_5m", "default", []string{"a.b"}, `sum by (pod) (ns:rate_5m{namespace="default", pod=~"a\\.b"})`},
		// Label values are PromQL string literals: quotes and backslashes cannot end them.
		{"m", `x"}) or vector(1) #`, []string{`p"|.*`},
			`sum by (pod) (m{namespace="x\"}) or vector(1) #", pod=~"p\"\\|\\.\\*"})`},
	} {
		got, err := PodQuery(tc.metric, tc.namespace, tc.pods)
		if err != nil || got != tc.want {
			t.Errorf("PodQuery(%q, %q, %q) = %q, %v; want %q", tc.metric, tc.namespace, tc.pods, got, err, tc.want)
		}
	}
}

func TestPodQueryRefuses(t *testing.T) {
	for _, metric := range []string{"", "1abc", "up) or vector(1", "m{a=\"b\"}", "a-b", "a b", "up\n"} {
		if q, err := PodQuery(metric, "default", []string{"p"}); err == nil {
			t.Errorf("PodQuery(%q) = %q; want an error", metric, q)
		}
	}
	if q, err := PodQuery("m", "default", nil); err == nil {
		t.Errorf("PodQuery with no pods = %q; want an error", q)
	}
}
