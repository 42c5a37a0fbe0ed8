// Package promql builds the adapter's one Prometheus query and reads its answer. It uses only the
// standard library, so that its test builds in seconds (go test ./promql).
package promql

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// metricName is Prometheus' metric name syntax: only such names are put into a query, so a
// request's metric name cannot inject PromQL.
var metricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

// ValidMetricName reports whether name is a Prometheus metric name.
func ValidMetricName(name string) bool { return metricName.MatchString(name) }

// PodQuery is `sum by (pod) (METRIC{namespace="NS", pod=~"P1|P2|..."})`: one sample per pod
// with series of the metric. Pod names are regular-expression-quoted (a `.` in a name matches only
// a `.`) and both label values are PromQL string literals (Go's quoting, which PromQL reads).
func PodQuery(metric, namespace string, pods []string) (string, error) {
	if !ValidMetricName(metric) {
		return "", fmt.Errorf("%q is not a Prometheus metric name (%s)", metric, metricName)
	}
	if len(pods) == 0 {
		return "", fmt.Errorf("no pods to query %s for", metric)
	}
	quoted := make([]string, len(pods))
	for i, p := range pods {
		quoted[i] = regexp.QuoteMeta(p)
	}
	return fmt.Sprintf("sum by (pod) (%s{namespace=%s, pod=~%s})",
		metric, strconv.Quote(namespace), strconv.Quote(strings.Join(quoted, "|"))), nil
}

// Sample is one pod's value and the time Prometheus evaluated it at.
type Sample struct {
	Value float64
	Time  time.Time
}

// Client runs instant queries against Prometheus' HTTP API.
type Client struct {
	URL  string // e.g. http://10.250.0.1:19090
	HTTP *http.Client
}

// PodValues runs query (an instant query whose series carry a `pod` label) and returns each
// pod's sample.
func (c *Client) PodValues(ctx context.Context, query string) (map[string]Sample, error) {
	u := strings.TrimSuffix(c.URL, "/") + "/api/v1/query?" + url.Values{"query": {query}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("prometheus answered %s with no API response: %w", resp.Status, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("prometheus: %s (%s)", body.Error, resp.Status)
	}
	if body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("prometheus: a %s, not a vector", body.Data.ResultType)
	}
	out := make(map[string]Sample, len(body.Data.Result))
	for _, r := range body.Data.Result {
		ts, ok := r.Value[0].(float64)
		s, ok2 := r.Value[1].(string)
		if !ok || !ok2 {
			return nil, fmt.Errorf("prometheus: a sample of unexpected shape %v", r.Value)
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("prometheus: sample value %q: %w", s, err)
		}
		out[r.Metric["pod"]] = Sample{Value: v, Time: time.UnixMilli(int64(ts * 1000))}
	}
	return out, nil
}
