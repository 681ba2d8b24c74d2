-- Cross-node fan-out: every inserted message notifies `herald_messages` with
-- its position. NOTIFY is transactional: it is sent on commit, and in commit
-- order, so listeners learn of positions in stream order.
CREATE FUNCTION herald_notify_message() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('herald_messages', NEW.position::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER messages_notify AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION herald_notify_message();
