"""Readers of the published formats (prefrec.data.readers), on tiny files each test writes in the raw format."""

import gzip
import json
from pathlib import Path

import pytest

from prefrec.data import readers as R
from prefrec.errors import UserError

# ---- tiny raw files ----------------------------------------------------------------------------------------------

ML1M_MOVIES = ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Lion King, The (1994)::Animation",
               "3::Misérables, Les (1995)::Drama", "4::Never Rated (1990)::Drama"]
ML1M_RATINGS = ["1::1::5::978300760", "1::2::3::978302109", "2::3::4::978301968", "2::1::1::978300000"]


def write_ml1m(folder: Path, ratings_name="ratings.dat", gz=False, ratings=ML1M_RATINGS, crlf=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.dat").write_bytes(("\n".join(ML1M_MOVIES) + "\n").encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    end = "\r\n" if crlf else "\n"
    data = (end.join(ratings) + end).encode("ascii")
    path = folder / ratings_name
    path.write_bytes(gzip.compress(data) if gz else data)
    return folder


def write_grouplens_100k(folder: Path, data_lines=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    genres = "|".join("0" * 19)
    items = [f"1|Toy Story (1995)|01-Jan-1995||http://x|{genres}",
             f"2|Usual Suspects, The (1995)|14-Aug-1995||http://x|{genres}",
             f"3|Misérables, Les (1995)|01-Jan-1995||http://x|{genres}"]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    data_lines = data_lines or ["1\t1\t5\t874965758", "1\t2\t3\t876893171", "2\t3\t4\t878542960"]
    (folder / "u.data").write_text("\n".join(data_lines) + "\n")
    return folder


def write_recbole_100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{folder.name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t3\t4\t878542960\n")
    (folder / f"{folder.name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation\n2\tUsual Suspects, The\t1995\tCrime\n3\tMisérables, Les\t1995\tDrama\n")
    return folder


# ---- MovieLens-1M ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, gz", [("ratings.dat", False), ("ratings.dat.gz", True),
                                      ("ratings_users0001-0002.dat.gz", True), ("ratings_part.dat", False)])
def test_ml1m_plain_gz_and_partial_names(tmp_path, name, gz):
    log = R.read_ml1m(write_ml1m(tmp_path / "ml-1m", name, gz))
    assert log.counts() == {"interactions": 4, "users": 2, "items": 3}
    assert log.catalog == {"items": 4, "users": 3}
    assert log.titles["2"] == "The Lion King (1994)"
    assert log.titles["3"] == "Les Misérables (1995)"  # latin-1 decoded
    assert log.interactions[0] == R.Interaction("1", "1", 5.0, 978300760)
    assert log.domain == "movies" and log.has_timestamps


def test_ml1m_ratings_file_given_directly_and_crlf(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m", crlf=True)
    log = R.read_ml1m(folder / "ratings.dat")
    assert [x.timestamp for x in log.interactions] == [978300760, 978302109, 978301968, 978300000]


def test_ml1m_two_ratings_files_is_ambiguous(tmp_path):
    folder = write_ml1m(tmp_path / "a", "ratings_a.dat")
    (folder / "ratings_b.dat").write_text("1::1::5::1\n")
    with pytest.raises(UserError, match="several ratings files"):
        R.read_ml1m(folder)


# ---- MovieLens-100K, both editions, and RecBole -------------------------------------------------------------------

def test_ml100k_grouplens_and_recbole_give_the_same_log(tmp_path):
    a = R.read_ml100k(write_grouplens_100k(tmp_path / "gl"))
    b = R.read_ml100k(write_recbole_100k(tmp_path / "ml-100k"))
    assert a.interactions == b.interactions
    assert a.titles == b.titles == {"1": "Toy Story (1995)", "2": "The Usual Suspects (1995)",
                                    "3": "Les Misérables (1995)"}
    c = R.read_ml100k(tmp_path / "gl" / "u.data")  # a file works too
    assert c.interactions == a.interactions
    assert R.read("ml-100k", tmp_path / "ml-100k" / "ml-100k.inter").titles == b.titles


def test_recbole_any_dataset_without_item_file(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "mine.inter").write_text("session_id:token\tuser_id:token\titem_id:token\n9\tu1\tA\n9\tu2\tB\n")
    log = R.read("recbole", folder)
    assert [(x.user, x.item, x.rating, x.timestamp) for x in log.interactions] == [("u1", "A", 1.0, None),
                                                                               ("u2", "B", 1.0, None)]
    assert not log.has_timestamps and log.title("A") == "A"
    assert any("no mine.item" in w for w in log.warnings)


def test_recbole_bad_header(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "x.inter").write_text("user_id\titem_id\n1\t2\n")
    with pytest.raises(UserError, match=r"x\.inter:1: header field 'user_id' is not 'name:type'"):
        R.read_recbole(folder)


# ---- Amazon 2014 / 2018 ------------------------------------------------------------------------------------------

def test_amazon_2014_with_python_literal_meta(tmp_path):
    folder = tmp_path / "amz"
    folder.mkdir()
    reviews = [{"reviewerID": "U1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1203984000},
               {"reviewerID": "U1", "asin": "B2", "overall": 2.0, "unixReviewTime": 1203984000},
               {"reviewerID": "U2", "asin": "B3", "overall": 4.0, "unixReviewTime": 1388361600}]
    (folder / "reviews_Video_Games_5.json.gz").write_bytes(
        gzip.compress(("\n".join(json.dumps(r) for r in reviews) + "\n").encode()))
    meta = ["{'asin': 'B1', 'title': 'Tom &amp; Jerry&nbsp;Kart', 'price': 3.5}",
            "{'asin': 'B2', 'title': \"Ocean's Game, The\", 'related': {'also_bought': ['B1']}}",
            "{'asin': 'B3'}"]  # some items have no title
    (folder / "meta_Video_Games.json.gz").write_bytes(gzip.compress(("\n".join(meta) + "\n").encode()))
    log = R.read("amazon-2014", folder)
    assert log.domain == "games"
    assert log.titles == {"B1": "Tom & Jerry Kart", "B2": "The Ocean's Game"}
    assert log.title("B3") == "B3" and any("1 items have no title" in w for w in log.warnings)
    assert log.counts() == {"interactions": 3, "users": 2, "items": 3}


def test_amazon_meta_is_never_evaluated(tmp_path):
    folder = tmp_path / "amz"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "reviews_Books_5.json").write_text('{"reviewerID": "U", "asin": "A", "overall": 5.0}\n')
    (folder / "meta_Books.json").write_text(f"__import__('os').system('touch {marker}')\n")
    with pytest.raises(UserError, match=r"meta_Books\.json:1: neither JSON nor a Python literal"):
        R.read("amazon-2014", folder)
    assert not marker.exists()


def test_amazon_2018_blank_line_string_vote_and_no_meta(tmp_path):
    path = tmp_path / "Movies_and_TV_5.json"
    rows = [{"overall": 5.0, "vote": "7", "verified": True, "reviewerID": "U1", "asin": "M1",
             "style": {"Format:": " DVD"}, "unixReviewTime": 1227398400},
            {"overall": 3.0, "reviewerID": "U2", "asin": "M1", "unixReviewTime": 1479945600}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    log = R.read("amazon-2018", path)
    assert log.counts() == {"interactions": 2, "users": 2, "items": 1}
    assert log.title("M1") == "M1" and any("ASIN is used as the title" in w for w in log.warnings)


def test_amazon_meta_repeated_records(tmp_path):
    """Amazon 2018's meta files repeat records: the same title again is silent; another title for the same ASIN keeps
    the first line's and says so, naming both lines (it used to replace the first silently)."""
    folder = tmp_path / "amz"
    folder.mkdir()
    (folder / "Books_5.json").write_text('{"reviewerID": "U", "asin": "A", "overall": 5.0}\n'
                                         '{"reviewerID": "U", "asin": "B", "overall": 2.0}\n')
    meta = [{"asin": "A", "title": "Dune"}, {"asin": "B", "title": "Emma"}, {"asin": "A", "title": "Dune"},
            {"asin": "B", "title": "Emma (Penguin Classics)"}]
    (folder / "meta_Books.json").write_text("\n".join(map(json.dumps, meta)) + "\n")
    log = R.read("amazon-2018", folder)
    assert log.titles == {"A": "Dune", "B": "Emma"}
    clash = [w for w in log.warnings if "another title" in w]
    assert len(clash) == 1 and "1 line(s)" in clash[0] and "id B on lines 2 and 4" in clash[0]
    assert "meta_Books.json" in clash[0]


# ---- LastFM ------------------------------------------------------------------------------------------------------

def write_lastfm(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    artists = (b"id\tname\turl\tpictureURL\n1\tMALICE MIZER\thttp://a\thttp://p\n"
               + "2\tRöyksopp\thttp://b\t\n".encode("utf-8")       # UTF-8 line, empty pictureURL
               + "3\tMotörhead\thttp://c\thttp://p\n".encode("latin-1"))  # a latin-1 line in a UTF-8 file
    (folder / "artists.dat").write_bytes(artists)
    (folder / "user_artists.dat").write_bytes(b"userID\tartistID\tweight\r\n2\t1\t13883\r\n2\t2\t11690\r\n3\t3\t5\r\n")
    return folder


def test_lastfm_mixed_encodings_and_line_endings(tmp_path):
    log = R.read("lastfm", write_lastfm(tmp_path / "lfm"))
    assert log.titles == {"1": "MALICE MIZER", "2": "Röyksopp", "3": "Motörhead"}
    assert log.interactions == [R.Interaction("2", "1", 13883.0, None), R.Interaction("2", "2", 11690.0, None),
                                R.Interaction("3", "3", 5.0, None)]
    assert log.value == "weight" and not log.has_timestamps and log.domain == "music"


# ---- Goodreads ---------------------------------------------------------------------------------------------------

def test_goodreads_csv_keeps_unrated_rows_for_the_filter(tmp_path):
    path = tmp_path / "goodreads_interactions.csv"
    path.write_text("user_id,book_id,is_read,rating,is_reviewed\n0,948,1,5,0\n0,947,1,0,0\n1,948,0,0,0\n")
    log = R.read("goodreads", path)
    assert log.counts() == {"interactions": 3, "users": 2, "items": 2}
    assert log.unrated == 0.0 and log.domain == "books" and not log.has_timestamps


def test_goodreads_json_with_titles(tmp_path):
    folder = tmp_path / "gr"
    folder.mkdir()
    rows = [{"user_id": "u1", "book_id": "10", "rating": 4, "date_added": "Tue Oct 17 06:42:31 -0700 2017"},
            {"user_id": "u1", "book_id": "11", "rating": 2, "date_added": "Mon Oct 16 06:42:31 -0700 2017"}]
    (folder / "goodreads_interactions_poetry.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    books = [{"book_id": "10", "title": "Hobbit, The"}, {"book_id": "11", "title": "Dune &amp; Co"}]
    (folder / "goodreads_books_poetry.json.gz").write_bytes(gzip.compress("\n".join(map(json.dumps, books)).encode()))
    log = R.read("goodreads", folder)
    assert log.titles == {"10": "The Hobbit", "11": "Dune & Co"}
    assert log.interactions[0].timestamp - log.interactions[1].timestamp == 86400 and log.has_timestamps


def test_goodreads_books_repeated_id_keeps_first_title(tmp_path):
    folder = tmp_path / "gr"
    folder.mkdir()
    (folder / "goodreads_interactions_poetry.json").write_text(json.dumps({"user_id": "u", "book_id": "10",
                                                                           "rating": 4}) + "\n")
    books = [{"book_id": "10", "title": "Ariel"}, {"book_id": "10", "title": "Ariel: The Restored Edition"}]
    (folder / "goodreads_books_poetry.json").write_text("\n".join(map(json.dumps, books)) + "\n")
    log = R.read("goodreads", folder)
    assert log.titles == {"10": "Ariel"}
    assert any("id 10 on lines 1 and 2" in w and "first line's title is kept" in w for w in log.warnings)


# ---- bad input: one clear error naming file, line and field ------------------------------------------------------

def test_truncated_gzip(tmp_path):
    folder = write_ml1m(tmp_path / "ml", "ratings.dat.gz", gz=True, ratings=ML1M_RATINGS * 500)
    path = folder / "ratings.dat.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(UserError, match=r"ratings\.dat\.gz: truncated or corrupt gzip"):
        R.read_ml1m(folder)


def test_wrong_separator(tmp_path):
    folder = write_ml1m(tmp_path / "ml", ratings=["1,1,5,978300760"])
    with pytest.raises(UserError, match=r"ratings\.dat:1: expected 4 fields .*'::'.*found 1; the line looks ','-separated"):
        R.read_ml1m(folder)


def test_non_numeric_rating(tmp_path):
    folder = write_grouplens_100k(tmp_path / "gl", ["1\t1\t5\t874965758", "1\t2\tfive\t876893171"])
    with pytest.raises(UserError, match=r"u\.data:2: field 'rating' is 'five'; expected a number"):
        R.read_ml100k(folder)


def test_rating_for_unknown_item(tmp_path):
    folder = write_ml1m(tmp_path / "ml", ratings=["1::1::5::978300760", "1::99::4::978300761"])
    with pytest.raises(UserError, match=r"ratings\.dat:2: field 'item' is '99', which is not in movies\.dat"):
        R.read_ml1m(folder)


def test_unknown_artist(tmp_path):
    folder = write_lastfm(tmp_path / "lfm")
    with open(folder / "user_artists.dat", "ab") as f:
        f.write(b"4\t777\t3\r\n")
    with pytest.raises(UserError, match=r"user_artists\.dat:5: field 'item' is '777'"):
        R.read_lastfm(folder)


def test_empty_file(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    (folder / "ratings.dat").write_text("")
    with pytest.raises(UserError, match=r"ratings\.dat: empty file"):
        R.read_ml1m(folder)


def test_header_only(tmp_path):
    folder = write_recbole_100k(tmp_path / "ml-100k")
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    with pytest.raises(UserError, match=r"ml-100k\.inter: no interaction rows"):
        R.read_ml100k(folder)


def test_wrong_field_count_in_atomic_file(tmp_path):
    folder = write_recbole_100k(tmp_path / "ml-100k")
    with open(folder / "ml-100k.inter", "a") as f:
        f.write("3 2 4 878542960\n")  # spaces, not tabs
    with pytest.raises(UserError, match=r"ml-100k\.inter:5: expected 4 tab-separated fields"):
        R.read_ml100k(folder)


def test_unknown_dataset_and_missing_source(tmp_path):
    with pytest.raises(UserError, match="expected one of"):
        R.read("netflix", tmp_path)
    with pytest.raises(UserError, match="no such file or folder"):
        R.read("ml-1m", tmp_path / "nope")


def test_not_utf8_where_utf8_is_required(tmp_path):
    folder = write_recbole_100k(tmp_path / "ml-100k")
    with open(folder / "ml-100k.item", "ab") as f:
        f.write("4\tCaf\u00e9\t1990\tDrama\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"ml-100k\.item:5: not valid utf-8 text"):
        R.read_ml100k(folder)


# ---- issue 14: encodings and blank titles --------------------------------------------------------------------------

def test_movielens_catalogue_resaved_as_utf8_is_read_as_utf8(tmp_path):
    """Point 2: a movies.dat / u.item re-saved as UTF-8 must not become mojibake; the published latin-1 still works."""
    a = write_ml1m(tmp_path / "ml1m")
    (a / "movies.dat").write_bytes(("\ufeff" + "\n".join(ML1M_MOVIES) + "\n").encode("utf-8"))  # with a BOM, too
    assert R.read("ml-1m", a).titles["3"] == "Les Misérables (1995)"
    b = write_grouplens_100k(tmp_path / "gl")
    (b / "u.item").write_bytes((b / "u.item").read_bytes().decode("latin-1").encode("utf-8"))
    log = R.read("ml-100k", b)
    assert log.titles["3"] == "Les Misérables (1995)" and "1" in log.titles
    assert R.read("ml-100k", write_grouplens_100k(tmp_path / "gl2")).titles["3"] == "Les Misérables (1995)"


def test_recbole_blank_titles_fall_back_to_the_item_id_with_a_warning(tmp_path):
    """Point 3: blank titles do not become " (1995)" shared by every such item."""
    folder = write_recbole_100k(tmp_path / "ml-100k")
    f = folder / "ml-100k.item"
    f.write_text(f.read_text().replace("Toy Story", " ").replace("Usual Suspects, The", ""))
    log = R.read("ml-100k", folder)
    assert log.titles == {"1": "1", "2": "2", "3": "Les Misérables (1995)"}
    assert any(w.startswith("2 catalogue items have a blank title (1, 2)") for w in log.warnings)


def test_order_by_names_the_time_of_a_log_without_timestamps(tmp_path):
    """Issue 14 point 1: the user may say what orders a log without time: a column, or the file's line order."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "mine.inter").write_text("user_id:token\titem_id:token\tseen_at:float\nu1\tA\t30\nu1\tB\t10\nu2\tA\t5\n")
    log = R.read("recbole", folder, order_by="seen_at")
    assert log.has_timestamps and log.order_by == "seen_at"
    assert [x.timestamp for x in log.interactions] == [30, 10, 5]
    plain = R.read("recbole", folder)
    assert not plain.has_timestamps and plain.order_by is None
    assert R.read("recbole", folder, order_by="file").order_by == "file"
    with pytest.raises(UserError, match="--order-by when: no such column"):
        R.read("recbole", folder, order_by="when")
    lfm = tmp_path / "lfm"
    lfm.mkdir()
    (lfm / "user_artists.dat").write_text("userID\tartistID\tweight\tday\n2\t51\t13883\t7\n2\t52\t11690\t3\n")
    log = R.read("lastfm", lfm, order_by="day")
    assert log.has_timestamps and [x.timestamp for x in log.interactions] == [7, 3]
    with pytest.raises(UserError, match="--order-by file: .* has timestamps"):
        R.read("ml-1m", write_ml1m(tmp_path / "ml1m"), order_by="file")
    with pytest.raises(UserError, match="its own timestamps"):
        R.read("ml-1m", tmp_path / "ml1m", order_by="seen_at")


# ---- issue 31: numbers are finite and in range, ids are text, or the row is refused -------------------------------

BAD_NUMBERS = [("nan", "5", "rating"), ("inf", "5", "rating"), ("1e308", "5", "rating"), ("-1", "5", "rating"),
               ("4", "nan", "timestamp"), ("4", "inf", "timestamp"), ("4", "1e308", "timestamp"),
               ("4", "-86400", "timestamp"), ("4", "5000000000", "timestamp")]  # 5e9 s: the year 2128


@pytest.mark.parametrize("rating, ts, field", BAD_NUMBERS)
def test_ml1m_and_ml100k_refuse_numbers_out_of_range(tmp_path, rating, ts, field):
    ts = "978300760" if ts == "5" else ts
    folder = write_ml1m(tmp_path / "ml", ratings=ML1M_RATINGS + [f"3::2::{rating}::{ts}"])
    with pytest.raises(UserError, match=rf"ratings\.dat:5: field '{field}' is '{ts if field == 'timestamp' else rating}'; expected"):
        R.read_ml1m(folder)
    folder = write_grouplens_100k(tmp_path / "gl", ["1\t1\t5\t874965758", f"2\t3\t{rating}\t{ts}"])
    with pytest.raises(UserError, match=rf"u\.data:2: field '{field}'"):
        R.read("ml-100k", folder)


@pytest.mark.parametrize("rating, ts, field", BAD_NUMBERS)
def test_recbole_amazon_goodreads_refuse_numbers_out_of_range(tmp_path, rating, ts, field):
    ts = "978300760" if ts == "5" else ts
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "mine.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                       f"u1\tA\t4\t978300760\nu1\tB\t{rating}\t{ts}\n")
    with pytest.raises(UserError, match=rf"mine\.inter:3: field '{field}'"):
        R.read("recbole", folder)
    rows = [{"reviewerID": "U1", "asin": "M1", "overall": 5.0, "unixReviewTime": 978300760},
            {"reviewerID": "U1", "asin": "M2", "overall": float(rating), "unixReviewTime": float(ts)}]
    path = tmp_path / "reviews_Movies.json"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # json.dumps writes NaN and Infinity
    name = "overall" if field == "rating" else "unixReviewTime"
    with pytest.raises(UserError, match=rf"reviews_Movies\.json:2: field '{name}'"):
        R.read("amazon-2018", path)
    if field == "rating":
        path = tmp_path / "goodreads_interactions.csv"
        path.write_text(f"user_id,book_id,is_read,rating,is_reviewed\n0,948,1,5,0\n0,947,1,{rating},0\n")
        with pytest.raises(UserError, match=r"goodreads_interactions\.csv:3: field 'rating'"):
            R.read("goodreads", path)


@pytest.mark.parametrize("weight", ["nan", "-3", "1e308", "inf"])
def test_lastfm_refuses_weights_out_of_range(tmp_path, weight):
    folder = write_lastfm(tmp_path / "lfm")
    with open(folder / "user_artists.dat", "ab") as f:
        f.write(f"3\t1\t{weight}\r\n".encode())
    with pytest.raises(UserError, match=rf"user_artists\.dat:5: field 'weight' is '{weight}'; expected"):
        R.read("lastfm", folder)


def test_goodreads_dates_before_1970_are_refused(tmp_path):
    path = tmp_path / "goodreads_interactions_poetry.json"
    path.write_text(json.dumps({"user_id": "u1", "book_id": "10", "rating": 4,
                                "date_added": "Mon Jan 01 00:00:00 +0000 1900"}) + "\n")
    with pytest.raises(UserError, match=r"poetry\.json:1: field 'date_added' is .*1900.*1970"):
        R.read("goodreads", path)


@pytest.mark.parametrize("bad_id", ["\udc80x", "a\tb", "a\nb", "", "a\x00b"])
def test_ids_that_are_not_printable_text_are_refused(tmp_path, bad_id):
    """A lone surrogate (an undecodable byte escaped in JSON) cannot be written as UTF-8; a tab or newline would
    break interactions.tsv; an empty id is no id."""
    rows = [{"reviewerID": "U1", "asin": "M1", "overall": 5.0}, {"reviewerID": bad_id, "asin": "M2", "overall": 4.0}]
    path = tmp_path / "reviews_Movies.json"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(UserError, match=r"reviews_Movies\.json:2: (field 'reviewerID' is .*; expected|a string "
                                        r"holds a lone surrogate)"):
        R.read("amazon-2018", path)


def test_ml1m_id_with_an_undecodable_control_byte_is_refused(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    with open(folder / "ratings.dat", "ab") as f:
        f.write(b"3\x00\x9b::1::4::978300760\n")
    with pytest.raises(UserError, match=r"ratings\.dat:5: field 'user' is .*; expected"):
        R.read_ml1m(folder)


def test_truncated_gzip_says_how_far_it_got(tmp_path):
    folder = write_ml1m(tmp_path / "ml", "ratings.dat.gz", gz=True, ratings=ML1M_RATINGS * 500)
    path = folder / "ratings.dat.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])
    with pytest.raises(UserError, match=r"ratings\.dat\.gz: truncated or corrupt gzip data after line [1-9]\d*"):
        R.read_ml1m(folder)
    path.write_bytes(whole[:12])  # the header and hardly anything else
    with pytest.raises(UserError, match=r"ratings\.dat\.gz: truncated or corrupt gzip data before its first line"):
        R.read_ml1m(folder)


# ---- issue 43: a foreign encoding is named, not read as data ------------------------------

@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16 or UTF-32"),
                                            ("utf-32", "UTF-32")])
def test_a_utf16_or_utf32_log_is_named_as_an_encoding(tmp_path, encoding, name):
    folder = write_grouplens_100k(tmp_path / "gl")
    (folder / "u.data").write_bytes("1\t1\t5\t874965758\n2\t3\t4\t878542960\n".encode(encoding))
    with pytest.raises(UserError, match=rf"u\.data: the file is {name}.* text; prefrec reads UTF-8 or Latin-1"):
        R.read("ml-100k", folder)
