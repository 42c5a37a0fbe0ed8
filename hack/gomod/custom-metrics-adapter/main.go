// Command modelops-custom-metrics-adapter serves the custom metrics API
// (custom.metrics.k8s.io/v1beta2 and v1beta1) for pods, from Prometheus, on the local cluster of
// hack/cluster.py. It is what a ModelDeployment's HorizontalPodAutoscaler reads when it scales on
// a per-pod metric (spec.autoscaling.customMetric, by default modelops_inflight_requests).
//
// Why our own: the usual adapters cannot be built here. prometheus-adapter
// (sigs.k8s.io/prometheus-adapter) is not served by the Go module proxy, and KEDA
// (github.com/kedacore/keda/v2) compiles every one of its scalers, hundreds of modules, which is
// far beyond the local cluster's build budget. This program is a thin provider on the library both
// are built on, sigs.k8s.io/custom-metrics-apiserver, which does the API server part (serving,
// delegated authentication and authorization, discovery, both API versions).
//
// In a production cluster, install prometheus-adapter instead (docs/install.md has its rule for
// modelops_inflight_requests); this adapter is for the local cluster only. (KEDA serves the
// external metrics API to HPAs of its own ScaledObjects, not the Pods metric of the operator's HPA.)
//
// What it answers: for a metric M on pods in namespace N, by name or by label selector, it lists
// the pods' names from the API server and asks Prometheus, in one instant query,
//
//	sum by (pod) (M{namespace="N", pod=~"p1|p2|..."})
//
// which is what docs/install.md's prometheus-adapter rule asks too. Only metric names of
// Prometheus' syntax are queried. A pod without a series of M is left out of a list and is
// NotFound by name, so the HorizontalPodAutoscaler reports the missing metric in its conditions.
// Other resources than pods, and metric label selectors, are not served.
package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"

	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider/helpers"

	"modelops.dev/hack/custom-metrics-adapter/promql"
)

// podMetrics is a provider.CustomMetricsProvider for pods' metrics in Prometheus.
type podMetrics struct {
	client dynamic.Interface
	mapper apimeta.RESTMapper
	prom   *promql.Client
}

// ListAllMetrics lists nothing in discovery: any metric name of Prometheus' syntax is answered,
// and Prometheus' names are not enumerated.
func (p *podMetrics) ListAllMetrics() []provider.CustomMetricInfo { return nil }

func (p *podMetrics) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	info, err := p.check(info, metricSelector)
	if err != nil {
		return nil, err
	}
	values, err := p.values(ctx, info, name.Namespace, []string{name.Name})
	if err != nil {
		return nil, err
	}
	if len(values) == 0 {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	return &values[0], nil
}

func (p *podMetrics) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValueList, error) {
	info, err := p.check(info, metricSelector)
	if err != nil {
		return nil, err
	}
	names, err := helpers.ListObjectNames(p.mapper, p.client, namespace, selector, info)
	if err != nil {
		return nil, err
	}
	list := &custom_metrics.MetricValueList{Items: []custom_metrics.MetricValue{}}
	if len(names) > 0 {
		list.Items, err = p.values(ctx, info, namespace, names)
	}
	return list, err
}

// check refuses what is not served: other resources than pods, metric label selectors, names
// that are not Prometheus metric names.
func (p *podMetrics) check(info provider.CustomMetricInfo, metricSelector labels.Selector) (provider.CustomMetricInfo, error) {
	info, _, err := info.Normalized(p.mapper)
	if err != nil {
		return info, err
	}
	if info.GroupResource.Group != "" || info.GroupResource.Resource != "pods" || !info.Namespaced {
		return info, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	if metricSelector != nil && !metricSelector.Empty() {
		return info, apierrors.NewBadRequest("metric label selectors are not supported by this adapter")
	}
	if !promql.ValidMetricName(info.Metric) {
		return info, apierrors.NewBadRequest(fmt.Sprintf("%q is not a Prometheus metric name", info.Metric))
	}
	return info, nil
}

// values answers the pods of names that have a series of the metric, in the order of names.
func (p *podMetrics) values(ctx context.Context, info provider.CustomMetricInfo, namespace string, names []string) ([]custom_metrics.MetricValue, error) {
	query, err := promql.PodQuery(info.Metric, namespace, names)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	samples, err := p.prom.PodValues(ctx, query)
	if err != nil {
		return nil, apierrors.NewServiceUnavailable(err.Error())
	}
	out := make([]custom_metrics.MetricValue, 0, len(samples))
	for _, name := range names {
		s, ok := samples[name]
		if !ok || math.IsNaN(s.Value) || math.IsInf(s.Value, 0) {
			continue
		}
		ref, err := helpers.ReferenceFor(p.mapper, types.NamespacedName{Namespace: namespace, Name: name}, info)
		if err != nil {
			return nil, err
		}
		out = append(out, custom_metrics.MetricValue{
			DescribedObject: ref,
			Metric:          custom_metrics.MetricIdentifier{Name: info.Metric},
			Timestamp:       metav1.NewTime(s.Time),
			Value:           *resource.NewMilliQuantity(int64(math.Round(s.Value*1000)), resource.DecimalSI),
		})
	}
	return out, nil
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()

	cmd := &basecmd.AdapterBase{Name: "modelops-custom-metrics-adapter"}
	prom := &promql.Client{HTTP: &http.Client{Timeout: 10 * time.Second}}
	cmd.Flags().StringVar(&prom.URL, "prometheus-url", "http://10.250.0.1:19090",
		"the Prometheus whose instant queries answer the pods' metrics")
	logs.AddFlags(cmd.Flags())
	if err := cmd.Flags().Parse(os.Args); err != nil {
		klog.Fatalf("flags: %v", err)
	}
	client, err := cmd.DynamicClient()
	if err != nil {
		klog.Fatalf("dynamic client: %v", err)
	}
	mapper, err := cmd.RESTMapper()
	if err != nil {
		klog.Fatalf("REST mapper: %v", err)
	}
	cmd.WithCustomMetrics(&podMetrics{client: client, mapper: mapper, prom: prom})
	if err := cmd.Run(context.Background()); err != nil {
		klog.Fatalf("custom metrics adapter: %v", err)
	}
}
