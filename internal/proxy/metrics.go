package proxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the proxy's Prometheus collectors.
type metrics struct {
	decisions *prometheus.CounterVec // trustproxy_decisions_total{verdict,reason,upstream,rule}
	upstream  *prometheus.CounterVec // trustproxy_upstream_fetches_total{kind,result}
	served    *prometheus.CounterVec // trustproxy_served_total{kind,source}
	unusable  *prometheus.CounterVec // trustproxy_storage_unusable_total{kind}
	degraded  prometheus.Gauge       // trustproxy_redis_degraded
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_decisions_total",
			Help: "Decisions on requests, by verdict (served, denied, audit), reason, upstream and rule (its index in trust.rules, or none).",
		}, []string{"verdict", "reason", "upstream", "rule"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_upstream_fetches_total",
			Help: "Manifest and blob fetches from upstream registries, by kind and result.",
		}, []string{"kind", "result"}),
		served: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_served_total",
			Help: "Manifests and blobs served, by kind and source (cache or upstream).",
		}, []string{"kind", "source"}),
		unusable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trustproxy_storage_unusable_total",
			Help: "Content read from storage that did not verify (altered or damaged) and was fetched again, by kind.",
		}, []string{"kind"}),
		degraded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trustproxy_redis_degraded",
			Help: "1 while Redis is configured but unreachable: this replica keeps to its own trust floor.",
		}),
	}
	for _, c := range []prometheus.Collector{m.decisions, m.upstream, m.served, m.unusable, m.degraded} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
