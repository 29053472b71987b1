WITH source_rows AS 
(SELECT orders.customer_id AS customer_id, orders.ordered_at AS at, orders.amount AS amount 
FROM orders 
WHERE orders.ordered_at < TIMESTAMP '2024-07-01 00:00:00' AND (orders.status IS NULL OR orders.status IN ('CLOSED', 'COMPLETE', 'COMPLETED', 'Closed', 'Complete', 'Completed', 'DELIVERED', 'Delivered', 'FULFILLED', 'Fulfilled', 'INVOICED', 'Invoiced', 'PAID', 'PROCESSED', 'Paid', 'Processed', 'SHIPPED', 'SUCCEEDED', 'SUCCESS', 'Shipped', 'Succeeded', 'Success', 'closed', 'complete', 'completed', 'delivered', 'fulfilled', 'invoiced', 'paid', 'processed', 'shipped', 'succeeded', 'success') OR (lower(trim(orders.status)) NOT IN ('abandoned', 'canceled', 'cancelled', 'chargeback', 'declined', 'expired', 'failed', 'refunded', 'rejected', 'returned', 'void', 'voided'))) AND orders.ordered_at >= TIMESTAMP '2023-07-02 00:00:00'), 
metrics AS 
(SELECT source_rows.customer_id AS customer_id, max(source_rows.at) AS last_at, count(*) AS frequency, sum(source_rows.amount) AS monetary 
FROM source_rows GROUP BY source_rows.customer_id), 
final AS 
(SELECT CAST(metrics.customer_id AS STRING) AS customer_id, datediff(DATE '2024-06-30', CAST(metrics.last_at AS DATE)) AS recency_days, CAST(metrics.frequency AS INT) AS frequency, CAST(coalesce(metrics.monetary, 0.0) AS DOUBLE) AS monetary 
FROM metrics)
 SELECT final.customer_id, final.recency_days, final.frequency, final.monetary 
FROM final;

SELECT count(*) AS customers, percentile_disc(array(0.199999999999, 0.39999999999900004, 0.599999999999, 0.7999999999990001)) WITHIN GROUP (ORDER BY rfm_metrics.frequency) AS f_cuts, CAST(avg(rfm_metrics.frequency) AS DOUBLE) AS f_mean, min(rfm_metrics.frequency) AS f_min, max(rfm_metrics.frequency) AS f_max, percentile_disc(array(0.199999999999, 0.39999999999900004, 0.599999999999, 0.7999999999990001)) WITHIN GROUP (ORDER BY rfm_metrics.monetary) AS m_cuts, CAST(avg(rfm_metrics.monetary) AS DOUBLE) AS m_mean, min(rfm_metrics.monetary) AS m_min, max(rfm_metrics.monetary) AS m_max, percentile_disc(array(0.199999999999, 0.39999999999900004, 0.599999999999, 0.7999999999990001)) WITHIN GROUP (ORDER BY rfm_metrics.recency_days DESC) AS r_cuts, CAST(avg(rfm_metrics.recency_days) AS DOUBLE) AS r_mean, min(rfm_metrics.recency_days) AS r_min, max(rfm_metrics.recency_days) AS r_max 
FROM rfm_metrics;

SELECT DATE '2024-06-30' AS as_of, 'clv_tier' AS scheme, scored.customer_id, scored.recency_days, scored.frequency, scored.monetary, scored.r_score, scored.f_score, scored.m_score, '' AS segment 
FROM (SELECT rfm_metrics.customer_id AS customer_id, rfm_metrics.recency_days AS recency_days, rfm_metrics.frequency AS frequency, rfm_metrics.monetary AS monetary, CAST(1 + CASE WHEN (rfm_metrics.recency_days < 1234.6678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.recency_days < 1234.8678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.recency_days < 1235.0678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.recency_days < 1235.2678) THEN 1 ELSE 0 END AS INT) AS r_score, CAST(1 + CASE WHEN (rfm_metrics.frequency > 1234.6678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.frequency > 1234.8678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.frequency > 1235.0678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.frequency > 1235.2678) THEN 1 ELSE 0 END AS INT) AS f_score, CAST(1 + CASE WHEN (rfm_metrics.monetary > 1234.6678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.monetary > 1234.8678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.monetary > 1235.0678) THEN 1 ELSE 0 END + CASE WHEN (rfm_metrics.monetary > 1235.2678) THEN 1 ELSE 0 END AS INT) AS m_score 
FROM rfm_metrics) AS scored;

