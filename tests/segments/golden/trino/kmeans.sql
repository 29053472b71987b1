WITH source_rows AS 
(SELECT orders.customer_id AS customer_id, orders.ordered_at AS at, orders.amount AS amount 
FROM orders 
WHERE orders.ordered_at < TIMESTAMP '2024-07-01 00:00:00' AND (orders.status IS NULL OR orders.status IN ('CLOSED', 'COMPLETE', 'COMPLETED', 'Closed', 'Complete', 'Completed', 'DELIVERED', 'Delivered', 'FULFILLED', 'Fulfilled', 'INVOICED', 'Invoiced', 'PAID', 'PROCESSED', 'Paid', 'Processed', 'SHIPPED', 'SUCCEEDED', 'SUCCESS', 'Shipped', 'Succeeded', 'Success', 'closed', 'complete', 'completed', 'delivered', 'fulfilled', 'invoiced', 'paid', 'processed', 'shipped', 'succeeded', 'success') OR (lower(trim(orders.status)) NOT IN ('abandoned', 'canceled', 'cancelled', 'chargeback', 'declined', 'expired', 'failed', 'refunded', 'rejected', 'returned', 'void', 'voided'))) AND orders.ordered_at >= TIMESTAMP '2023-07-02 00:00:00'), 
metrics AS 
(SELECT source_rows.customer_id AS customer_id, max(source_rows.at) AS last_at, count(*) AS frequency, sum(source_rows.amount) AS monetary 
FROM source_rows GROUP BY source_rows.customer_id), 
final AS 
(SELECT CAST(metrics.customer_id AS VARCHAR) AS customer_id, date_diff('day', CAST(metrics.last_at AS DATE), DATE '2024-06-30') AS recency_days, CAST(metrics.frequency AS INTEGER) AS frequency, CAST(coalesce(metrics.monetary, 0.0) AS DOUBLE) AS monetary 
FROM metrics)
 SELECT final.customer_id, final.recency_days, final.frequency, final.monetary 
FROM final;

SELECT count(*) AS customers, max(f_cuts.f_cut1) AS f_cut1, max(f_cuts.f_cut2) AS f_cut2, max(f_cuts.f_cut3) AS f_cut3, max(f_cuts.f_cut4) AS f_cut4, CAST(avg(rfm_metrics.frequency) AS DOUBLE) AS f_mean, min(rfm_metrics.frequency) AS f_min, max(rfm_metrics.frequency) AS f_max, max(m_cuts.m_cut1) AS m_cut1, max(m_cuts.m_cut2) AS m_cut2, max(m_cuts.m_cut3) AS m_cut3, max(m_cuts.m_cut4) AS m_cut4, CAST(avg(rfm_metrics.monetary) AS DOUBLE) AS m_mean, min(rfm_metrics.monetary) AS m_min, max(rfm_metrics.monetary) AS m_max, max(r_cuts.r_cut1) AS r_cut1, max(r_cuts.r_cut2) AS r_cut2, max(r_cuts.r_cut3) AS r_cut3, max(r_cuts.r_cut4) AS r_cut4, CAST(avg(rfm_metrics.recency_days) AS DOUBLE) AS r_mean, min(rfm_metrics.recency_days) AS r_min, max(rfm_metrics.recency_days) AS r_max 
FROM rfm_metrics JOIN (SELECT min(CASE WHEN (f_ranked.pos * 5 >= f_ranked.n * 1) THEN f_ranked.v END) AS f_cut1, min(CASE WHEN (f_ranked.pos * 5 >= f_ranked.n * 2) THEN f_ranked.v END) AS f_cut2, min(CASE WHEN (f_ranked.pos * 5 >= f_ranked.n * 3) THEN f_ranked.v END) AS f_cut3, min(CASE WHEN (f_ranked.pos * 5 >= f_ranked.n * 4) THEN f_ranked.v END) AS f_cut4 
FROM (SELECT rfm_metrics.frequency AS v, row_number() OVER (ORDER BY rfm_metrics.frequency) AS pos, count(rfm_metrics.frequency) OVER () AS n 
FROM rfm_metrics 
WHERE rfm_metrics.frequency IS NOT NULL) AS f_ranked) AS f_cuts ON true JOIN (SELECT min(CASE WHEN (m_ranked.pos * 5 >= m_ranked.n * 1) THEN m_ranked.v END) AS m_cut1, min(CASE WHEN (m_ranked.pos * 5 >= m_ranked.n * 2) THEN m_ranked.v END) AS m_cut2, min(CASE WHEN (m_ranked.pos * 5 >= m_ranked.n * 3) THEN m_ranked.v END) AS m_cut3, min(CASE WHEN (m_ranked.pos * 5 >= m_ranked.n * 4) THEN m_ranked.v END) AS m_cut4 
FROM (SELECT rfm_metrics.monetary AS v, row_number() OVER (ORDER BY rfm_metrics.monetary) AS pos, count(rfm_metrics.monetary) OVER () AS n 
FROM rfm_metrics 
WHERE rfm_metrics.monetary IS NOT NULL) AS m_ranked) AS m_cuts ON true JOIN (SELECT max(CASE WHEN (r_ranked.pos * 5 >= r_ranked.n * 1) THEN r_ranked.v END) AS r_cut1, max(CASE WHEN (r_ranked.pos * 5 >= r_ranked.n * 2) THEN r_ranked.v END) AS r_cut2, max(CASE WHEN (r_ranked.pos * 5 >= r_ranked.n * 3) THEN r_ranked.v END) AS r_cut3, max(CASE WHEN (r_ranked.pos * 5 >= r_ranked.n * 4) THEN r_ranked.v END) AS r_cut4 
FROM (SELECT rfm_metrics.recency_days AS v, row_number() OVER (ORDER BY rfm_metrics.recency_days DESC) AS pos, count(rfm_metrics.recency_days) OVER () AS n 
FROM rfm_metrics 
WHERE rfm_metrics.recency_days IS NOT NULL) AS r_ranked) AS r_cuts ON true;

SELECT DATE '2024-06-30' AS as_of, 'kmeans' AS scheme, scored.customer_id, scored.recency_days, scored.frequency, scored.monetary, scored.r_score, scored.f_score, scored.m_score, '' AS segment 
FROM (SELECT rfm_metrics.customer_id AS customer_id, rfm_metrics.recency_days AS recency_days, rfm_metrics.frequency AS frequency, rfm_metrics.monetary AS monetary, CAST(1 + CASE WHEN (rfm_metrics.recency_days < 1234.6678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.recency_days < 1234.8678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.recency_days < 1235.0678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.recency_days < 1235.2678) THEN 1 ELSE 0 END AS INTEGER) AS r_score, CAST(1 + CASE WHEN (rfm_metrics.frequency > 1234.6678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.frequency > 1234.8678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.frequency > 1235.0678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.frequency > 1235.2678) THEN 1 ELSE 0 END AS INTEGER) AS f_score, CAST(1 + CASE WHEN (rfm_metrics.monetary > 1234.6678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.monetary > 1234.8678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.monetary > 1235.0678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.monetary > 1235.2678) THEN 1 ELSE 0 END AS INTEGER) AS m_score 
FROM rfm_metrics) AS scored;

