from relay.proxy.error_pages import wants_html


def test_html_error_pages_go_to_browsers_not_to_clients_naming_json_first():
    assert wants_html("text/html,application/xhtml+xml,*/*;q=0.8")
    assert wants_html("text/html, application/json;q=0.9")
    assert not wants_html("application/json, text/html;q=0.5")
    assert not wants_html("*/*")
    assert not wants_html("")
