import pytest

pytestmark = pytest.mark.django_db


def test_create_conversation_answers_202_with_pending_state(api):
    response = api.post("/api/v1/conversations", {"user_id": "u1", "messages": [{"text": "hi"}]}, format="json")
    assert response.status_code == 202
    assert response.json()["state"] == "pending"
