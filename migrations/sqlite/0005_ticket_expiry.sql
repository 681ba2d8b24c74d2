-- Redeemed tickets are forgotten once expired, at every redemption: the
-- pruning reads them by expiry, not the whole table.
CREATE INDEX redeemed_tickets_by_expiry ON redeemed_tickets (expires_at);
